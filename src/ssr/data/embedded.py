"""The embedded grounded-QA set: documents about invented organisations, generated deterministically.

Each document states a random subset of an organisation's facts; questions about stated facts are
answerable (gold = a short sentence with the fact), questions about facts the document leaves
out are unanswerable (gold = the configured unanswerable sentence). Train and test use disjoint
organisations. No external data is needed, so the main job runs anywhere.
"""

from __future__ import annotations

import random

from ssr.data.prompts import DEFAULT_UNANSWERABLE
from ssr.data.records import Record

_PREFIX = [
    "Vel",
    "Nor",
    "Quin",
    "Astra",
    "Bryn",
    "Cal",
    "Dorn",
    "Elm",
    "Fen",
    "Gal",
    "Hal",
    "Iso",
    "Jar",
    "Kest",
    "Lum",
    "Mor",
    "Nex",
    "Orv",
    "Pell",
    "Rath",
    "Sol",
    "Tarn",
    "Ul",
    "Vox",
    "Wren",
    "Zel",
]
_SUFFIX = ["mora", "ith", "ara", "wick", "ton", "var", "ley", "dell", "ion", "oda", "ax", "ent"]
_KIND = [
    "Analytics",
    "Robotics",
    "Foods",
    "Logistics",
    "Health",
    "Energy",
    "Textiles",
    "Software",
    "Pharma",
    "Bank",
    "Airlines",
    "Games",
]
_CITY = [
    "Tallinn",
    "Porto",
    "Leeds",
    "Graz",
    "Tartu",
    "Lyon",
    "Aarhus",
    "Utrecht",
    "Bilbao",
    "Krakow",
    "Ghent",
    "Turku",
    "Malmo",
    "Brno",
    "Cork",
    "Split",
]
_FIRST = ["Ana", "Jonas", "Mira", "Tomas", "Lena", "Omar", "Ines", "Pavel", "Sofia", "Ravi", "Elena", "Kofi"]
_LAST = ["Ruiz", "Berg", "Novak", "Okafor", "Lind", "Costa", "Haddad", "Kaur", "Moreau", "Sato", "Weber"]
_PRODUCT = [
    "a scheduling app",
    "solar roof tiles",
    "a cargo drone",
    "oat-based yoghurt",
    "a payroll platform",
    "smart thermostats",
    "an insulin pen",
    "recycled denim",
    "a language-learning game",
    "electric ferries",
    "a fraud-detection service",
    "modular warehouses",
]
_POLICY = [
    "four-day work weeks",
    "fully remote work",
    "a paid sabbatical every five years",
    "free public transport passes for staff",
    "a ban on internal email after 6 pm",
    "annual volunteering days",
    "open salary bands",
    "on-site childcare",
]

# attribute -> (document sentence, question, gold answer sentence); {n} is the organisation name.
_FACTS = {
    "founded": ("{n} was founded in {v}.", "When was {n} founded?", "{n} was founded in {v}."),
    "city": ("Its headquarters are in {v}.", "Where is {n} headquartered?", "{n} is headquartered in {v}."),
    "ceo": ("The company is led by chief executive {v}.", "Who is the CEO of {n}?", "The CEO of {n} is {v}."),
    "staff": ("It employs {v} people.", "How many people does {n} employ?", "{n} employs {v} people."),
    "product": (
        "Its best-known product is {v}.",
        "What is the best-known product of {n}?",
        "The best-known product of {n} is {v}.",
    ),
    "policy": (
        "Staff benefit from a policy of {v}.",
        "What workplace policy does {n} offer its staff?",
        "{n} offers its staff {v}.",
    ),
    "revenue": (
        "Last year it reported revenue of {v} million euros.",
        "What revenue did {n} report last year?",
        "{n} reported revenue of {v} million euros last year.",
    ),
    "offices": (
        "It operates {v} offices.",
        "How many offices does {n} operate?",
        "{n} operates {v} offices.",
    ),
    "founder": ("It was started by {v}.", "Who founded {n}?", "{n} was founded by {v}."),
    "listed": (
        "Its shares trade on the {v} stock exchange.",
        "On which stock exchange do shares of {n} trade?",
        "Shares of {n} trade on the {v} stock exchange.",
    ),
}
_FILLER = [
    "The company publishes an annual sustainability report.",
    "Its logo was redesigned recently.",
    "It sponsors a local youth football club.",
    "Customers can reach support around the clock.",
    "It holds several patents.",
    "The firm hosts an open day each spring.",
]


def _value(attr: str, rng: random.Random) -> str:
    person = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    return {
        "founded": str(rng.randint(1950, 2022)),
        "city": rng.choice(_CITY),
        "ceo": person,
        "staff": str(rng.randint(12, 9000)),
        "product": rng.choice(_PRODUCT),
        "policy": rng.choice(_POLICY),
        "revenue": str(rng.randint(2, 900)),
        "offices": str(rng.randint(2, 40)),
        "founder": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "listed": rng.choice(_CITY),
    }[attr]


def _organisations(seed: int) -> list[str]:
    rng = random.Random(seed)
    names = sorted({f"{p}{s} {k}" for p in _PREFIX for s in _SUFFIX for k in _KIND})
    rng.shuffle(names)
    return names


def generate(
    split: str = "train",
    n_docs: int | None = None,
    questions_per_doc: int = 4,
    unanswerable_share: float = 0.5,
    seed: int = 1234,
    unanswerable_sentence: str = DEFAULT_UNANSWERABLE,
) -> list[Record]:
    """Records for ``split`` (train: 120 documents, test: 40 by default; disjoint organisations)."""
    if split not in ("train", "test"):
        raise ValueError(f"embedded_grounded_qa split must be 'train' or 'test', got {split!r}")
    names = _organisations(seed)
    n_docs = n_docs or (120 if split == "train" else 40)
    names = names[:n_docs] if split == "train" else names[-n_docs:]
    records = []
    for d, name in enumerate(names):
        rng = random.Random(f"{seed}:{name}")
        attrs = list(_FACTS)
        rng.shuffle(attrs)
        stated, missing = attrs[:6], attrs[6:]
        values = {a: _value(a, rng) for a in attrs}
        sentences = [_FACTS[a][0].format(n=name, v=values[a]) for a in stated]
        sentences.insert(rng.randrange(1, len(sentences)), rng.choice(_FILLER))
        document = f"{name} is a company. " + " ".join(sentences)
        n_una = round(questions_per_doc * unanswerable_share)
        picks = [(a, True) for a in rng.sample(stated, questions_per_doc - n_una)]
        picks += [(a, False) for a in rng.sample(missing, min(n_una, len(missing)))]
        for attr, answerable in picks:
            _, question, gold = _FACTS[attr]
            records.append(
                Record(
                    id=f"emb-{split}-{d:03d}-{attr}",
                    question=question.format(n=name),
                    gold=gold.format(n=name, v=values[attr]) if answerable else unanswerable_sentence,
                    document=document,
                    answerable=answerable,
                    meta={
                        "source": "embedded_grounded_qa",
                        "title": name,
                        "attribute": attr,
                        "answers": [values[attr]] if answerable else [],
                    },
                )
            )
    return records
