"""Italian text without images, for pretraining the demo's Italian BERT by masked-language modelling.

Half of it says what the shapes data set's captions say (every phrasing of every scene, so the BERT
knows the words the captions use), half is other everyday sentences with the same colours, numbers and
places about other things (cats, books, balloons...), so that the words' meaning comes from varied
contexts rather than from one template. No sentence is paired with an image.
"""

from __future__ import annotations

import numpy as np

from clip_jax.data.shapes import COLOURS, COUNTS, POSITIONS, all_scenes, captions

# Masculine nouns (singular, plural), so that the colour adjectives agree as in the captions.
NOUNS = {
    "gatto": "gatti",
    "cane": "cani",
    "libro": "libri",
    "fiore": "fiori",
    "palloncino": "palloncini",
    "cappello": "cappelli",
    "treno": "treni",
    "pesce": "pesci",
    "bicchiere": "bicchieri",
    "cuscino": "cuscini",
}
VERBS = ("vede", "compra", "disegna", "cerca", "guarda", "prende")
SUBJECTS = ("marco", "anna", "la bambina", "il nonno", "la maestra", "mio fratello")
PLACES = ("sul tavolo", "nel giardino", "sulla strada", "nella scatola", "vicino alla finestra")


def _sentence(rs: np.random.RandomState) -> str:
    noun = list(NOUNS)[rs.randint(len(NOUNS))]
    colour = list(COLOURS)[rs.randint(len(COLOURS))]
    count = int(rs.randint(1, 4))
    singular, plural = COLOURS[colour][1], COLOURS[colour][2]
    word, adjective = (noun, singular) if count == 1 else (NOUNS[noun], plural)
    number = COUNTS[count]
    position = list(POSITIONS)[rs.randint(len(POSITIONS))]
    place = PLACES[rs.randint(len(PLACES))]
    verb, subject = VERBS[rs.randint(len(VERBS))], SUBJECTS[rs.randint(len(SUBJECTS))]
    other = [c for c in COLOURS if c != colour][rs.randint(len(COLOURS) - 1)]
    forms = (
        f"{subject} {verb} {number} {word} {adjective} {place}",
        f"il {noun} è {singular}" if count == 1 else f"i {NOUNS[noun]} sono {plural}",
        f"{place} c'è un {noun} {singular}" if count == 1 else f"{place} ci sono {number} {word} {adjective}",
        f"{number} {word} {adjective} {position} {place}",
        f"ho visto {number} {word} di colore {singular} {position}",
        f"{subject} {verb} il {noun} {singular} e non quello {COLOURS[other][1]}",
        f"{position} ci sono {number} {word}" if count > 1 else f"{position} c'è un {noun}",
    )
    return forms[rs.randint(len(forms))]


def sentences(rs: np.random.RandomState, n: int) -> list[str]:
    """``n`` varied everyday Italian sentences about coloured things (no shapes, no images)."""
    return [_sentence(rs) for _ in range(n)]


def italian_corpus(seed: int = 0, num_other: int = 4000) -> list[str]:
    """Every phrasing of every scene's caption, plus ``num_other`` other sentences, shuffled."""
    rs = np.random.RandomState(seed)
    texts = [t for scene in all_scenes() for t in captions(*scene, "it")] + sentences(rs, num_other)
    rs.shuffle(texts)
    return texts


def vocabulary(language: str = "it") -> list[str]:
    """Every word the captions of ``language`` use, as BERT's basic tokenizer splits them (for a demo tokenizer)."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, pre_tokenizer = BertNormalizer(lowercase=True), BertPreTokenizer()
    split = lambda text: [w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
    texts = [text for scene in all_scenes() for text in captions(*scene, language)]
    if language == "it":
        texts += [*sentences(np.random.RandomState(0), 2000), "una immagine con forme di colore e forma"]
    return sorted({w for text in texts for w in split(text)})
