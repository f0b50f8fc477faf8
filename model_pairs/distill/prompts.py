"""Training prompts for distilling a chat draft: user messages in Spec-Bench's six categories, built from
templates and, for summarization and retrieval, from module docstrings of the Python standard library.

:func:`training_prompts` is deterministic for a seed. None of these prompts is in the held-out evaluation set
(``evals/prompts_chat/``, written by hand); ``tests/test_distill.py`` checks that the two are disjoint.
"""

from __future__ import annotations

import ast
import random
import re

from ..corpus import list_files, stdlib_root

__all__ = ["CATEGORIES", "docstring_passages", "training_prompts"]

CATEGORIES = ("conversation", "code", "math", "question_answering", "summarization", "retrieval")

_TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "inflation", "the French Revolution", "vaccines",
    "machine learning", "the stock market", "plate tectonics", "the immune system", "climate change",
    "the Roman Empire", "electricity", "gravity", "the internet", "DNA", "volcanoes", "the moon landing",
    "renewable energy", "the printing press", "democracy", "bees", "coffee", "sleep", "recycling", "earthquakes",
    "rainbows", "the human heart", "supply and demand", "the Great Wall of China", "antibiotics", "glaciers",
    "solar panels", "the Olympic Games", "compound interest", "tides", "the Renaissance", "batteries",
    "coral reefs", "jazz music", "chess", "bread baking", "meditation", "the periodic table", "magnets",
    "bird migration", "the Silk Road", "cloud computing", "encryption", "rain forests", "the speed of light",
]
_QA_TEMPLATES = [
    "What is {t}?", "Explain {t} in simple terms.", "Why is {t} important?", "Give me three facts about {t}.",
    "How would you describe {t} to a ten-year-old?", "What are common misconceptions about {t}?",
    "Write a short paragraph about {t}.", "What is the history of {t}?",
]
_CONVERSATION = [
    "Hi! How are you today?", "Can you recommend a good book for a long flight?", "I feel tired all the time. "
    "Any tips?", "What should I cook for dinner tonight?", "Tell me a joke about computers.",
    "I have a job interview tomorrow. How should I prepare?", "How can I make new friends in a new city?",
    "What is a good way to start learning to paint?", "Can you help me plan a weekend trip?",
    "I want to start running. Where do I begin?", "Write a short poem about autumn.",
    "What are some fun things to do on a rainy day?", "How do I stay motivated while studying?",
    "Suggest a name for my new cat.", "What is your favourite season and why?", "Give me advice on saving money.",
    "How can I sleep better?", "Write a thank-you note to a teacher.", "Describe a perfect morning.",
    "I am bored. Suggest a hobby.", "Write a haiku about the sea.", "How do I apologize to a friend?",
    "What makes a good leader?", "Tell me a short story about a dragon.", "How can I be more productive?",
]
_CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "returns the n-th Fibonacci number",
    "counts the vowels in a sentence", "merges two sorted lists", "removes duplicates from a list",
    "computes the factorial of n", "finds the largest element of a list", "checks whether a word is a palindrome",
    "converts Celsius to Fahrenheit", "sums the digits of an integer", "flattens a nested list",
    "counts word frequencies in a text", "returns the greatest common divisor of two numbers",
    "sorts a list of dictionaries by a key", "reads a file and returns its lines", "checks if a year is a leap year",
    "computes the average of a list", "finds all even numbers in a list", "capitalizes every word in a string",
    "implements binary search", "transposes a matrix", "validates an email address with a regular expression",
    "returns the second largest number in a list", "generates the first n prime numbers",
]
_CODE_TEMPLATES = [
    "Write a Python function that {t}.", "Show me how to write a function in Python that {t}.",
    "Write a JavaScript function that {t}.", "Explain step by step how to write code that {t}.",
]
_SNIPPETS = [
    "for i in range(10):\n    print(i * i)", "x = [n for n in range(20) if n % 3 == 0]",
    "def f(a, b=2):\n    return a ** b", "with open('data.txt') as fh:\n    rows = fh.read().split()",
    "d = {k: len(k) for k in ['a', 'bb', 'ccc']}", "while n > 1:\n    n = n // 2\n    steps += 1",
    "import math\nprint(math.sqrt(16))", "s = 'hello'\nprint(s[::-1])", "try:\n    x = 1 / 0\nexcept "
    "ZeroDivisionError:\n    x = None",
]


def docstring_passages(max_files: int = 400, min_chars: int = 300, max_chars: int = 900) -> list[str]:
    """English passages: first paragraphs of module docstrings in the standard library, sorted by path."""
    root = stdlib_root()
    passages = []
    for path in list_files(root)[: max_files * 4]:
        if "/test" in "/" + path or path.startswith("idlelib/idle_test"):
            continue
        try:
            doc = ast.get_docstring(ast.parse((root / path).read_text(encoding="utf-8")))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if not doc:
            continue
        text = re.sub(r"[ \t]+", " ", doc.strip())
        if len(text) >= min_chars and not text.count(">>>"):
            passages.append(text[:max_chars].rsplit(" ", 1)[0] if len(text) > max_chars else text)
        if len(passages) >= max_files:
            break
    return passages


def training_prompts(seed: int = 0, passages: list[str] | None = None) -> list[dict]:
    """About 600 user messages ``{"id", "category", "prompt"}`` over :data:`CATEGORIES`, shuffled by ``seed``."""
    rng = random.Random(seed)
    out = []

    def add(category, text):
        out.append({"id": f"train-{category}-{len(out):04d}", "category": category, "prompt": text})

    for text in _CONVERSATION:
        add("conversation", text)
    for topic in _TOPICS:
        add("conversation", f"I'm curious about {topic}. Can we chat about it?")
        for template in rng.sample(_QA_TEMPLATES, 3):
            add("question_answering", template.format(t=topic))
    for task in _CODE_TASKS:
        for template in rng.sample(_CODE_TEMPLATES, 2):
            add("code", template.format(t=task))
    for snippet in _SNIPPETS:
        add("code", f"What does this Python code do?\n\n{snippet}")
    for _ in range(60):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        kind = rng.randrange(5)
        if kind == 0:
            add("math", f"What is {a} times {b}?")
        elif kind == 1:
            add("math", f"A shop sells pens for {a} cents each. How much do {b} pens cost in dollars?")
        elif kind == 2:
            add("math", f"Solve for x: {a}x + {b} = {a * 3 + b}.")
        elif kind == 3:
            add("math", f"A train travels {a * 10} km in {b % 9 + 1} hours. What is its average speed?")
        else:
            add("math", f"What is {a}% of {b * 10}? Explain your steps.")
    passages = docstring_passages() if passages is None else passages
    for i, passage in enumerate(passages):
        if i % 2 == 0:
            add("summarization", rng.choice(["Summarize the following text in two sentences:\n\n{p}",
                                             "{p}\n\nWrite a one-paragraph summary of the text above.",
                                             "Give a short summary of this documentation:\n\n{p}"]).format(p=passage))
        else:
            question = rng.choice(["What is the main purpose described in the passage?",
                                   "According to the passage, what does this module provide?",
                                   "Which functions or classes does the passage mention?"])
            add("retrieval", f"Read the passage and answer the question.\n\nPassage:\n{passage}\n\nQuestion: "
                             f"{question}")
    rng.shuffle(out)
    return out
