"""A wider set of training prompts: user messages composed from banks of subjects, situations, forms, tasks and
styles, snippets and docstrings of the standard library's functions, and prose passages (the target's own earlier
answers), so that the data cover far more of what chat users ask than
:func:`~decoding.model_pairs.distill.prompts.training_prompts`' fixed templates.

:func:`varied_prompts` is deterministic for a seed; different seeds give mostly different messages. The held-out
chat prompts (``evals/prompts_chat/``) are written by hand and never composed here (``tests/test_distill.py``).
"""

from __future__ import annotations

import ast
import random
import re

from ..corpus import list_files, stdlib_root

__all__ = ["function_sources", "prose_passages", "varied_prompts"]

_SUBJECTS = """photosynthesis|the water cycle|black holes|inflation|the French Revolution|vaccines|machine learning|
the stock market|plate tectonics|the immune system|climate change|the Roman Empire|electricity|gravity|the internet|
DNA|volcanoes|the moon landing|renewable energy|the printing press|democracy|bees|coffee|sleep|recycling|earthquakes|
rainbows|the human heart|supply and demand|antibiotics|glaciers|solar panels|the Olympic Games|compound interest|tides|
the Renaissance|batteries|coral reefs|jazz music|chess|bread baking|meditation|the periodic table|magnets|
bird migration|the Silk Road|cloud computing|encryption|rain forests|the speed of light|ancient Egypt|the Industrial
Revolution|quantum computing|blockchain|the human brain|memory|habits|nutrition|vitamins|exercise|yoga|gardening|
composting|honey|chocolate|tea|cheese making|fermentation|wine|pizza|sushi|the Amazon river|the Sahara desert|
Antarctica|the Arctic|penguins|whales|dolphins|elephants|wolves|octopuses|ants|butterflies|dinosaurs|fossils|evolution|
genetics|the solar system|Mars|Jupiter|the Sun|comets|satellites|rockets|airplanes|trains|electric cars|bicycles|
traffic|city planning|architecture|bridges|skyscrapers|the Eiffel Tower|the pyramids|the Great Wall of China|
Shakespeare|poetry|novels|libraries|museums|painting|photography|film making|video games|board games|football|
basketball|tennis|marathons|swimming|mountain climbing|camping|hiking|sailing|fishing|public speaking|negotiation|
leadership|teamwork|remote work|time management|productivity|procrastination|stress|happiness|friendship|kindness|
parenting|education|online learning|homework|exams|learning a language|Spanish|Japanese|sign language|writing|
grammar|punctuation|spreadsheets|databases|operating systems|Linux|Python|JavaScript|web browsers|search engines|
passwords|privacy|social media|smartphones|3D printing|robots|artificial intelligence|self-driving cars|drones|
nuclear energy|wind turbines|hydropower|oil|natural gas|water pollution|air pollution|plastic|deforestation|oceans|
weather|hurricanes|tornadoes|snow|clouds|lightning|the seasons|time zones|calendars|clocks|money|banks|taxes|
budgets|credit cards|insurance|mortgages|startups|marketing|advertising|customer service|trade|globalization|
the European Union|the United Nations|elections|laws|courts|human rights|the Cold War|World War II|the Vikings|
the Aztecs|ancient Greece|philosophy|ethics|logic|statistics|probability|prime numbers|fractions|geometry|algebra|
calculus|the Pythagorean theorem|maps|GPS|volunteering|pets|dogs|cats|horses|houseplants|cooking pasta|baking cookies|
moving house|job interviews|resumes|first aid|the common cold|allergies|teeth|eyesight|hearing|music theory|the piano|
the guitar|singing|dancing|opera|theatre|comedy|fairy tales|mythology|astronomy|telescopes|microscopes|bacteria|
viruses|cells|proteins|the ozone layer|carbon dioxide|soil|farming|irrigation|fishing boats|lighthouses|castles"""
_QUESTIONS = [
    "What is {s}?", "How does {s} work?", "Explain {s} in simple terms.", "Why does {s} matter?",
    "Give me five interesting facts about {s}.", "What are the pros and cons of {s}?", "Explain {s} like I'm five.",
    "What is the history of {s}?", "What are common myths about {s}?", "How would you teach {s} to a beginner?",
    "Compare {s} and {t}.", "What do {s} and {t} have in common?", "What is the difference between {s} and {t}?",
    "What would the world look like without {s}?", "What are the most important things to know about {s}?",
    "Can you give me a quick overview of {s}?", "What careers involve {s}?", "How has {s} changed over time?",
    "What are some good questions to ask an expert on {s}?", "Tell me something surprising about {s}.",
    "Make a study plan for learning about {s} in one week.", "What are the main ideas behind {s}?",
    "Write a quiz of three questions about {s}, with answers.", "How is {s} related to {t}?",
]
_FORMS = ["a short poem", "a haiku", "a limerick", "a short story", "a blog post introduction", "a tweet",
          "a product description", "a slogan", "a dialogue between two friends", "a speech opening", "a news headline "
          "and first paragraph", "a diary entry", "a short essay", "a riddle", "a song chorus", "a letter",
          "a motivational message", "a list of tips", "a recipe-style guide", "a travel postcard"]
_AUDIENCES = ["", "", " for children", " for a teenager", " for a busy professional", " for my grandmother",
              " for a school newsletter", " for a science class", " for beginners", " for experts"]
_SITUATIONS = """I just started a new job|I moved to a new city|my friend forgot my birthday|I can't focus when I
study|I want to learn to cook|I have too many emails|my plants keep dying|I want to get fit|I am planning a
wedding|my laptop is very slow|I have an exam next week|I want to save for a holiday|my neighbour is noisy|I want
to read more books|I am learning to drive|I have a fear of flying|I want to change careers|my team missed a
deadline|I am hosting a dinner party|I want to adopt a dog|I feel lonely lately|I want to write a novel|my kid
does not like vegetables|I keep losing my keys|I want to wake up earlier|I have a long flight tomorrow|I want to
start a small business|I need to give feedback to a colleague|my phone battery drains fast|I want to learn to play
the guitar|I am going camping for the first time|I have to give a toast at a wedding|I want to drink more water|my
room is always messy|I want to volunteer|I got a parking ticket|I want to learn to code|I am visiting Japan|my
internet keeps disconnecting|I have a meeting with my boss""".replace("\n", " ")
_ASKS = ["What should I do?", "Any advice?", "Can you help me make a plan?", "What are my options?",
         "Give me three ideas.", "How do I start?", "What mistakes should I avoid?", "Can you write a checklist?",
         "How do I stay motivated?", "What would you suggest?"]
_CODE_TASKS = """reverses a string|checks whether a number is prime|returns the n-th Fibonacci number|counts the
vowels in a sentence|merges two sorted lists|removes duplicates from a list|computes a factorial|finds the
largest element of a list|checks for palindromes|converts Celsius to Fahrenheit|sums the digits of an integer|
flattens a nested list|counts word frequencies|returns the greatest common divisor|sorts records by a key|reads a CSV
file|checks for leap years|computes an average|filters even numbers|capitalizes every word|implements binary
search|transposes a matrix|validates an email address|finds the second largest number|generates primes|rotates a
list by k places|checks balanced parentheses|converts a number to Roman numerals|parses a date string|computes the
median|finds common elements of two lists|counts lines in a file|implements a stack|implements a queue|
implements a linked list|computes the power set|shuffles a deck of cards|simulates a dice roll|converts binary to
decimal|finds anagrams in a list|compresses a string with run-length encoding|computes a moving average|
implements bubble sort|implements quicksort|implements merge sort|finds the longest word|checks if two strings are
rotations|removes punctuation from text|formats a phone number|calculates compound interest|computes the area of a
circle|computes the distance between two points|chunks a list into pieces|zips two lists into a dictionary|
finds the mode of a list|retries a function call|caches function results|measures how long a function takes|
counts characters in a string|validates a password""".replace("\n", " ")
_LANGUAGES = ["Python", "Python", "Python", "JavaScript", "Java", "C", "C++", "Go", "Rust", "TypeScript", "Ruby",
              "Bash"]
_CODE_TEMPLATES = ["Write a {l} function that {t}.", "How do I write {l} code that {t}?",
                   "Show me a {l} example that {t}, with comments.", "Write a {l} program that {t} and test it.",
                   "Explain an algorithm that {t}, then write it in {l}.", "Write a short {l} snippet that {t}."]
_CODE_ASKS = ["What does this Python function do?", "Explain this code line by line.", "Can you find a bug or an "
              "improvement in this code?", "Write a docstring for this function.", "Rewrite this code to be more "
              "readable.", "Write a unit test for this function.", "What is the time complexity of this code?"]
_STYLES = ["", "", "", "", " Answer briefly.", " Use bullet points.", " Explain step by step.",
           " Keep it under 100 words.", " Be friendly and encouraging.", " Use a simple example."]
_SUMMARY = ["Summarize this text:\n\n{p}", "{p}\n\nWhat is the main point of the text above?",
            "Explain this documentation in plain English:\n\n{p}", "Give three key points from this text:\n\n{p}",
            "Rewrite this passage for a beginner:\n\n{p}", "TL;DR:\n\n{p}"]
# Questions any prose passage answers (the target's own earlier answers: see prose_passages).
_PROSE_RETRIEVAL = ["What is the passage mainly about?", "According to the passage, why does this matter?",
                    "Which example does the passage give?", "What are two facts the passage states?",
                    "Answer in one sentence: what does the passage explain?", "What advice does the passage give?",
                    "Which numbers, names or dates does the passage mention?", "What does the passage say first?",
                    "Is there anything the passage warns about? What?", "What is the last point of the passage?"]
_RETRIEVAL = ["What does the passage say the function returns?", "Which arguments are mentioned?",
              "What is the purpose of this function, according to the passage?", "Does the passage mention any "
              "exceptions? Which?", "What happens by default, according to the passage?"]


def _bank(text: str) -> list[str]:
    return [item.strip() for item in text.replace("\n", " ").split("|") if item.strip()]


def function_sources(max_items: int = 3000, max_lines: int = 14) -> tuple[list[str], list[str]]:
    """Short function sources and long function docstrings from the standard library (not its tests)."""
    root = stdlib_root()
    sources, docs = [], []
    for path in list_files(root):
        if "test" in path or len(sources) >= max_items:
            continue
        try:
            text = (root / path).read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if doc and 200 <= len(doc) <= 1200 and ">>>" not in doc:
                docs.append(f"{node.name}: " + re.sub(r"\s+", " ", doc))
            if 4 <= node.end_lineno - node.lineno + 1 <= max_lines:
                sources.append(ast.get_source_segment(text, node) or "")
    return [s for s in sources if s][:max_items], docs[:max_items]


def _math(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
    return rng.choice([
        f"What is {a} plus {b} times {c}?", f"What is {a * c} divided by {c}?", f"Simplify the fraction {a}/{a * c}.",
        f"What is {a}/{c} + {b}/{c}?", f"Convert {a} kilometres to miles.", f"Convert {a * 10} minutes to hours.",
        f"A rectangle is {a} cm by {b} cm. What are its area and perimeter?",
        f"I buy {c} items at ${a}.{b:02d} each. What is the total?", f"Solve {c}x - {b} = {c * a - b}.",
        f"What is the probability of rolling a sum of {c} with two dice?",
        f"A recipe for {c} people needs {a} grams of flour. How much for {c + 2} people?",
        f"What comes next: {a}, {a + c}, {a + 2 * c}, {a + 3 * c}, ...?", f"Is {a * b + 1} a prime number?",
        f"What is {b}% of {a * 4}?", f"A price rose from ${a} to ${a + b}. By what percentage did it rise?",
        f"How many seconds are there in {c} days?", f"What is the square root of {a * a}?",
        f"A car uses {c} litres per 100 km. How much fuel for {a * 10} km?",
        f"If I save ${a} a week, how long until I have ${a * b}?", f"What is the average of {a}, {b} and {c}?",
    ])


def prose_passages(texts: list[str], low: int = 200, high: int = 1200) -> list[str]:
    """The prose among ``texts`` (a target's earlier answers): ``low`` to ``high`` characters, without code, inline
    code or chat markup, cut after the last full sentence; in order, without repeats."""
    out = []
    for text in texts:
        text = text.strip()
        cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind(".") if text.endswith(".") else -1)
        text = text[:cut + 1] if cut > 0 else text
        if low <= len(text) <= high and not re.search(r"`|\bdef |[{};]\s*$|<\||^\s*(import|#include)", text, re.M):
            out.append(text)
    return list(dict.fromkeys(out))


def _retrieval(text: str, questions: list[str], rng: random.Random) -> str:
    return f"Read the passage and answer the question.\n\nPassage:\n{text}\n\nQuestion: {rng.choice(questions)}"


def varied_prompts(seed: int = 0, count: int = 1000, sources: tuple[list[str], list[str]] | None = None,
                   passages: list[str] | None = None) -> list[dict]:
    """``count`` user messages ``{"id", "category", "prompt"}`` over the six categories of
    :data:`~decoding.model_pairs.distill.prompts.CATEGORIES`, deterministic for ``seed``.

    ``sources`` is ``(function sources, docstrings)`` (default: :func:`function_sources`). ``passages``: prose (see
    :func:`prose_passages`) that half of the summarization and retrieval messages read instead of docstrings, with
    questions any prose answers: what chat users paste is more often prose than documentation.
    """
    rng = random.Random(seed)
    subjects, situations, tasks = _bank(_SUBJECTS), _bank(_SITUATIONS), _bank(_CODE_TASKS)
    snippets, docs = function_sources() if sources is None else sources
    prose = passages or []
    passage = lambda: (rng.choice(prose), _PROSE_RETRIEVAL) if prose and rng.random() < 0.5 else \
        (rng.choice(docs), _RETRIEVAL)  # noqa: E731
    makers = {
        "conversation": lambda: rng.choice([
            f"{rng.choice(situations)}. {rng.choice(_ASKS)}",
            f"Write {rng.choice(_FORMS)} about {rng.choice(subjects)}{rng.choice(_AUDIENCES)}.",
            f"Let's chat about {rng.choice(subjects)}. What do you find interesting about it?"]),
        "question_answering": lambda: rng.choice(_QUESTIONS).format(s=rng.choice(subjects), t=rng.choice(subjects)),
        "code": lambda: rng.choice(_CODE_TEMPLATES).format(l=rng.choice(_LANGUAGES), t=rng.choice(tasks))
        if not snippets or rng.random() < 0.6 else f"{rng.choice(_CODE_ASKS)}\n\n{rng.choice(snippets)}",
        "math": lambda: _math(rng) + rng.choice(["", "", " Show your work.", " Explain your reasoning."]),
        "summarization": lambda: rng.choice(_SUMMARY).format(p=passage()[0]) if docs else _math(rng),
        "retrieval": lambda: _retrieval(*passage(), rng) if docs else _math(rng),
    }
    weights = {"conversation": 3, "question_answering": 3, "code": 2, "math": 1, "summarization": 1, "retrieval": 1}
    names = rng.choices(list(weights), weights=list(weights.values()), k=count)
    out = []
    for i, category in enumerate(names):
        style = rng.choice(_STYLES) if category in ("conversation", "question_answering", "code") else ""
        out.append({"id": f"varied-{seed}-{category}-{i:05d}", "category": category,
                    "prompt": makers[category]() + style})
    return out
