"""Writes the demo notebooks (run from this folder: python make_notebooks.py). Edit here, not the .ipynb."""

import nbformat as nbf

SETUP = """\
# The demo model: a stand-in English CLIP's vision tower + an Italian BERT, taught Italian captions.
# Trained on first use (a few minutes on 2 CPU cores, stand-ins included), offline.
import numpy as np
from clip_jax.demo import demo_model

model, config, data = demo_model()
print(f"logit scale {model.logit_scale:.1f}, embedding size {model.module.projection_dim}")"""


def notebook(title, cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(title)] + [
        nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return nb


ZERO_SHOT = notebook("""# Zero-shot classification with prompt ensembles, Italian and English side by side

The demo taught a (stand-in) English CLIP Italian: its vision tower was paired with an Italian BERT that
never saw an image, and the pair was trained on Italian captions of coloured shapes. Here it classifies
pictures of *held-out* colour–shape combinations (never seen together in that training) by colour, using
prompt ensembles: each class embedding is the renormalised mean of the embeddings of several prompts. The
same classes are then tried with English prompts: the Italian text tower does not know English (most English
words are unknown tokens to its vocabulary), so the gap is what teaching CLIP a language is about.""", [
    SETUP,
    """\
from clip_jax.evaluate.zeroshot import classification_metrics
from clip_jax.prompts import class_embeddings

split = data["heldout"]
labels_it = ["rosso", "verde", "blu", "giallo"]
labels_en = ["red", "green", "blue", "yellow"]
templates_it = ["un cerchio {}", "un quadrato {}", "un triangolo {}", "un cerchio {} a sinistra",
                "un quadrato {} in alto", "un triangolo {} in basso"]
templates_en = ["a {} circle", "a {} square", "a {} triangle", "a {} circle on the left",
                "a {} square at the top", "a {} triangle at the bottom"]
truth = np.array([labels_it.index(lab["colour"]) for lab in split["labels"]])
images = model.encode_image(split["images"])""",
    """\
rows = []
for language, names, templates in (("italiano", labels_it, templates_it), ("English", labels_en, templates_en)):
    single = class_embeddings(model, names, templates[:1])
    ensemble = class_embeddings(model, names, templates)
    for kind, classes in (("one prompt", single), ("ensemble", ensemble)):
        acc = classification_metrics(images @ classes.T, truth, len(names))["acc1"]
        rows.append((language, kind, acc))
print(f"{'prompts':10s} {'':12s} accuracy  (chance {1 / len(labels_it):.2f})")
for language, kind, acc in rows:
    print(f"{language:10s} {kind:12s} {acc:.3f}")""",
    """\
# One picture, its class probabilities with the Italian ensemble.
import matplotlib.pyplot as plt

probs = np.exp(model.logit_scale * images[:1] @ class_embeddings(model, labels_it, templates_it).T)
probs /= probs.sum()
plt.figure(figsize=(6, 2.5))
plt.subplot(1, 2, 1); plt.imshow(split["images"][0]); plt.axis("off"); plt.title(split["captions"][0][0], fontsize=8)
plt.subplot(1, 2, 2); plt.barh(labels_it, probs[0]); plt.xlim(0, 1)
plt.tight_layout()""",
])

SEARCH = notebook("""# Text-to-image search over a folder of images

Write a folder of pictures, embed them once, and search them with Italian queries.""", [
    SETUP,
    """\
import tempfile
from pathlib import Path
from PIL import Image

folder = Path(tempfile.mkdtemp()) / "immagini"
folder.mkdir()
for i, picture in enumerate(data["val"]["images"][:200]):
    Image.fromarray(picture).save(folder / f"{i:04d}.png")
paths = sorted(folder.glob("*.png"))
index = model.encode_image([Image.open(p).convert("RGB") for p in paths])
print(f"indexed {len(paths)} images from {folder}: {index.shape}")""",
    """\
def search(query, k=5):
    scores = index @ model.encode_text([query])[0]
    best = np.argsort(-scores)[:k]
    return [(paths[i], float(scores[i])) for i in best]

queries = ["tre quadrati gialli in basso", "un cerchio verde a sinistra", "due triangoli blu in alto"]
results = {q: search(q) for q in queries}
for query, hits in results.items():
    print(query, "->", [f"{p.name} ({s:.2f})" for p, s in hits])""",
    """\
import matplotlib.pyplot as plt

fig, axes = plt.subplots(len(queries), 5, figsize=(8, 1.8 * len(queries)))
for row, (query, hits) in enumerate(results.items()):
    for col, (path, score) in enumerate(hits):
        axes[row][col].imshow(Image.open(path)); axes[row][col].axis("off")
        axes[row][col].set_title(f"{score:.2f}", fontsize=8)
    axes[row][0].text(-5, 32, query, ha="right", va="center", fontsize=8)
plt.tight_layout()""",
])

MAP = notebook("""# Embedding maps

A 2-D map (UMAP) of the image embeddings coloured by class, with each class's text embedding as a star
(hollow: one prompt; filled: template mean), and one map per vision layer showing how the classes
separate with depth.""", [
    SETUP,
    """\
import json, tempfile
from pathlib import Path
from PIL import Image
from clip_jax.evaluate.tasks.embedmap import run_embedmap

root = Path(tempfile.mkdtemp())
split = data["val"]
for i, (picture, label) in enumerate(zip(split["images"], split["labels"])):
    (root / "folder" / label["colour"]).mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(root / "folder" / label["colour"] / f"{i}.png")
classes = sorted(p.name for p in (root / "folder").iterdir())
(root / "prompts.json").write_text(json.dumps({"classnames": classes,
    "templates": ["un cerchio {}", "un quadrato {}", "un triangolo {}"]}))
result = run_embedmap(model, "demo", f"imagefolder:{root / 'folder'}", str(root / "prompts.json"),
                      str(root / "prompts.json"), str(root / "map.png"), layers=True, method="umap")
result["metrics"]""",
    """\
from IPython.display import Image as Show
Show(filename=str(root / "map.png"))""",
])

for name, nb in (("zero_shot.ipynb", ZERO_SHOT), ("text_to_image_search.ipynb", SEARCH),
                 ("embedding_map.ipynb", MAP)):
    nbf.write(nb, name)
    print("wrote", name)
