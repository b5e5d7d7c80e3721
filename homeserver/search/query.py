"""A user's search term, parsed once and written out in each engine's syntax.

Users type what they would into a web search box: words, "quoted
phrases", `-word` to exclude, `or` between alternatives. Nothing they
type can reach either engine's query language as syntax: a term is cut
into words (runs of letters and digits) before anything else, so quotes,
`*`, `NEAR(`, `AND`, colons or brackets are just separators or plain
words, and an unbalanced quote simply runs to the end of the term.

Every word is matched as a prefix (as Synapse does): `meet` finds
"meeting". Terms are ANDed; `or` separates alternatives; a `-term` is
excluded from its alternative. An alternative with nothing but
exclusions is dropped, so a search always looks for something.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# More than this many terms is not a search anyone types; the rest are ignored.
MAX_TERMS = 32

_WORD = re.compile(r"[^\W_]+")
# A quoted phrase (to the end of the term if unclosed), or a run of non-spaces.
_CHUNK = re.compile(r'(-?)"([^"]*)"?|(\S+)')


@dataclass(frozen=True)
class Term:
    """One word or phrase; `negated` for `-term`."""

    words: tuple[str, ...]
    phrase: bool
    negated: bool = False


@dataclass(frozen=True)
class SearchQuery:
    """Alternatives (ORed), each a list of terms (ANDed)."""

    alternatives: tuple[tuple[Term, ...], ...]

    @property
    def is_empty(self) -> bool:
        return not self.alternatives

    @property
    def words(self) -> list[str]:
        """The words searched for (not the excluded ones), lower-cased, in order."""
        found: dict[str, None] = {}
        for terms in self.alternatives:
            for term in terms:
                if not term.negated:
                    found.update(dict.fromkeys(w.lower() for w in term.words))
        return list(found)

    def to_tsquery(self) -> str:
        """PostgreSQL `to_tsquery` syntax: `(meet:* & (martian <-> men) & !foo:*) | (...)`."""

        def item(term: Term) -> str:
            text = (
                "(" + " <-> ".join(term.words) + ")" if term.phrase else f"{term.words[0]}:*"
            )
            return f"!{text}" if term.negated else text

        return " | ".join(
            "(" + " & ".join(item(t) for t in terms) + ")" for terms in self.alternatives
        )

    def to_fts5(self) -> str:
        """SQLite FTS5 MATCH syntax: `("meet"* AND "martian men") NOT "foo"* OR (...)`.

        FTS5's NOT is binary, so each alternative's exclusions follow its
        wanted terms. Words hold only letters and digits, so quoting them
        needs no escaping.
        """

        def item(term: Term) -> str:
            return f'"{" ".join(term.words)}"' if term.phrase else f'"{term.words[0]}"*'

        parts = []
        for terms in self.alternatives:
            wanted = " AND ".join(item(t) for t in terms if not t.negated)
            excluded = "".join(f" NOT {item(t)}" for t in terms if t.negated)
            parts.append(f"(({wanted}){excluded})")
        return " OR ".join(parts)


def parse_search_term(text: str) -> SearchQuery:
    """The query a search term asks for (see the module docstring)."""
    alternatives: list[tuple[Term, ...]] = []
    current: list[Term] = []
    count = 0

    def close() -> None:
        if any(not t.negated for t in current):
            alternatives.append(tuple(current))
        current.clear()

    for match in _CHUNK.finditer(text):
        if count >= MAX_TERMS:
            break
        quoted_negation, quoted, bare = match.groups()
        if bare is not None:
            if bare.lower() == "or":
                close()
                continue
            if bare.lower() == "and":
                continue
            negated = bare.startswith("-")
            words = tuple(_WORD.findall(bare))
            # "e-mail" or "v1.2" is one term whose words must be adjacent.
            phrase = len(words) > 1
        else:
            negated = bool(quoted_negation)
            words = tuple(_WORD.findall(quoted))
            phrase = len(words) > 1
        if not words:
            continue
        current.append(Term(words, phrase, negated))
        count += 1
    close()
    return SearchQuery(tuple(alternatives))


def all_words_query(text: str) -> SearchQuery:
    """Every word of `text` as a prefix, all required: for names, where
    `or` and `-` are parts of names, not operators."""
    words = _WORD.findall(text)[:MAX_TERMS]
    if not words:
        return SearchQuery(())
    return SearchQuery((tuple(Term((w,), False) for w in words),))
