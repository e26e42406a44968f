"""Text-only distillation into OpenAI's CLIP (M-CLIP's recipe): no images, only English–Italian sentence pairs.

    python train.py --config configs/distill_italian.py --workdir runs/distill-it \\
        --config.distill.train=jsonl:/data/en-it/train.jsonl --config.distill.val=jsonl:/data/en-it/val.jsonl

Teacher: openai/clip-vit-base-patch32 — its text tower + text projection embed the English side once (cached
in data.cache_dir); its vision tower, visual projection and temperature become the result's, unchanged.
Student: dbmdz/bert-base-italian-xxl-uncased + a fresh 512-d projection, trained to give each Italian sentence
the teacher's embedding of its English original (MSE, as M-CLIP; distill.loss='cosine' is the option).
Data: one JSON object per line, {"en": "...", "it": "..."} (other column names: distill.teacher_column /
distill.student_column; csv:/tsv: listings work too). M-CLIP (Carlsson et al. 2022) used machine-translated
captions (GCC, MSCOCO, VizWiz); captions of images are what the teacher's embedding space knows best.

Our choices, not M-CLIP's (set them for your data): mean pooling (M-CLIP and sentence-transformers pool by
mean; the export is then clip_jax's format, loaded by CLIPModel.from_pretrained — set
model.text_pooling='pooler' for a transformers VisionTextDualEncoderModel export), the phase lengths,
learning rates, batch size and max_length. Evaluate with eval.py on xm3600:/xtd10: (README).
"""

from clip_jax.config import base_config, phase


def get_config():
    c = base_config()
    c.train.objective = "distill"
    c.model.vision = "openai/clip-vit-base-patch32"  # the teacher
    c.model.text = "dbmdz/bert-base-italian-xxl-uncased"  # the student
    c.model.projection_dim = 512  # the teacher's embedding size
    c.model.text_pooling = "mean"
    c.model.max_length = 64
    c.distill.teacher_column = "en"
    c.distill.student_column = "it"
    c.distill.loss = "mse"
    c.train.batch_size = 256
    c.train.weight_decay = 0.01
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.eval_every = 1000
    c.phases.warmup = phase(1000, r"text_projection\..*", {"head": 1e-3}, warmup_steps=100)
    c.phases.finetune = phase(
        20000, r"(text|text_projection)\..*", {"head": 1e-4, "text": 2e-5}, warmup_steps=500
    )
    return c
