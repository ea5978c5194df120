"""Per-data-set input formats for language models (the AFT paper, Appendix A.2).

Each template names its fields in braces. A data set whose examples are plain strings
fills the template's first field; an example given as a dict fills fields by name, one
given as a tuple or list fills them in order. Data sets with no entry use ``"{text}"``,
the text as it is.

A pair task's example (MNLI's premise and hypothesis) is stored as one string, its fields
joined by ``FIELD_SEP``: its own prompt fills them in order, and a one-field template
(``"{text}"``, for models that take no prompt) gets them one per line.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

DEFAULT_PROMPT = "{text}"
FIELD_SEP = "\x1f"  # ASCII unit separator: never in real text, so a pair survives as one str


def join_fields(*parts: str) -> str:
    """One stored example of a pair task (see the module docstring)."""
    return FIELD_SEP.join(str(p).replace(FIELD_SEP, " ") for p in parts)

# Appendix A.2, verbatim apart from typographic quotes (straight quotes here) and the
# stray space the text dump left after each line break.
PROMPTS: dict[str, str] = {
    "imdb": "{review} Overall, the sentiment of my review is",
    "boolq": "Question: {question}\nReference: {passage}\nAnswer:",
    "mnli": "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer:",
    "sst2": 'Review: "{sentence}"\nSentiment:',
    "mrpc": "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nIs Sentence 1 equivalent to Sentence 2? Answer:",
    "qqp": "Question 1: {question1}\nQuestion 2: {question2}\nAre Question 1 and Question 2 equivalent? Answer:",
    "qnli": "Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question? Answer:",
    "rte": "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDoes Sentence 1 entail Sentence 2? Answer:",
    # Not in the paper: Rotten Tomatoes snippets are the sentences SST-2 was built from,
    # so they get SST-2's sentiment prompt.
    "rotten_tomatoes": 'Review: "{sentence}"\nSentiment:',
}
# Other spellings of the same data sets.
_ALIASES = {"sst-2": "sst2", "sst": "sst2", "glue/sst2": "sst2", "super_glue/boolq": "boolq", "glue/mnli": "mnli",
            "glue/mrpc": "mrpc", "glue/qqp": "qqp", "glue/qnli": "qnli", "glue/rte": "rte",
            "rotten-tomatoes": "rotten_tomatoes", "stanfordnlp/imdb": "imdb"}

_FIELD = re.compile(r"\{(\w+)\}")


def prompt_for(dataset: str | None) -> str:
    """The template for ``dataset`` (by name, case-insensitive), or ``"{text}"``."""
    if not dataset:
        return DEFAULT_PROMPT
    key = dataset.lower()
    return PROMPTS.get(_ALIASES.get(key, key), DEFAULT_PROMPT)


def fields(template: str) -> list[str]:
    """The field names of ``template``, in order of first appearance."""
    seen: list[str] = []
    for name in _FIELD.findall(template):
        if name not in seen:
            seen.append(name)
    return seen


def format_prompt(template: str, example: Any) -> str:
    """``example`` (a string, a dict of fields or a tuple of fields) written into ``template``.

    Only ``{name}`` fields are substituted, so braces inside the texts are left alone.
    """
    names = fields(template)
    if isinstance(example, str) and FIELD_SEP in example:
        example = _split_fields(example, names)
    if isinstance(example, str):
        values = {names[0]: example} if names else {}
    elif isinstance(example, Mapping):
        values = {k: str(v) for k, v in example.items()}
    elif isinstance(example, Sequence):
        if len(example) != len(names):
            raise ValueError(f"the prompt {template!r} has {len(names)} fields ({', '.join(names)}); "
                             f"the example has {len(example)} parts")
        values = dict(zip(names, map(str, example)))
    else:
        values = {names[0]: str(example)} if names else {}
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"the prompt {template!r} needs the field(s) {', '.join(missing)}; "
                         f"the example has {', '.join(values) or 'none'}")
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def _split_fields(example: str, names: list[str]) -> tuple[str, ...] | str:
    parts = tuple(example.split(FIELD_SEP))
    return parts if len(parts) == len(names) else "\n".join(parts)


def fit_prompt(example: Any, template: str, max_length: int, encode: Callable[[str, bool], list[int]],
               decode: Callable[[list[int]], str], encode_truncated: Callable[[str], list[int]]) -> list[int]:
    """Token ids of ``example`` in ``template``, at most ``max_length`` of them.

    The example's longest field is cut, never the template, so a prompt's closing words
    (", Sentiment:") survive a long review. ``encode(text, special_tokens)``, ``decode(ids)``
    and ``encode_truncated(text)`` come from the tokenizer in use: the Hugging Face one when
    training, the ``tokenizers`` one in the torch-free runtime, so both cut identically.
    """
    names = fields(template)
    if isinstance(example, str) and FIELD_SEP in example:
        example = _split_fields(example, names)
    if isinstance(example, str):
        parts = {names[0] if names else "text": example}
    elif isinstance(example, Mapping):
        parts = dict(example)
    else:
        parts = dict(zip(names, example))
    longest = max(parts, key=lambda k: len(str(parts[k])))
    text_ids = encode(str(parts[longest]), False)
    keep = len(text_ids)
    for _ in range(6):  # decoding can re-tokenise differently: a few passes converge
        excess = len(encode(format_prompt(template, parts), True)) - max_length
        if excess <= 0:
            break
        keep = max(keep - excess - 1, 0)
        parts[longest] = decode(text_ids[:keep])
    ids = encode(format_prompt(template, parts), True)
    if len(ids) > max_length:  # the template alone is too long: plain truncation
        ids = encode_truncated(format_prompt(template, parts))
    return ids
