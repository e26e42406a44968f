"""The offline distillation demo: teach the stand-in English CLIP Italian from parallel sentences only (M-CLIP).

    python train.py --config configs/distill_demo.py

Teacher: the English CLIP stand-in (built on first use, cached in ~/.cache/clip_jax, like configs/demo.py).
Student: the Italian BERT stand-in (masked-LM on Italian text only) with a fresh projection into the
teacher's 64-d embedding space. Data: parallel English/Italian captions of the synthetic scenes — every
phrasing, paired phrasing by phrasing — without the held-out colour-shape pairs, which serve as the
held-out pairs (val/cosine: student(Italian) vs teacher(English)). No image is seen in training; afterwards
the demo report measures Italian zero-shot on pictures of the held-out pairs and retrieval, exactly as for
the image recipe, and exports the dual encoder (the teacher's vision side, bit-identical) to
<workdir>/exported.
"""

from clip_jax.config import base_config, phase

STUDENT = r"(text|text_projection)\..*"


def get_config():
    c = base_config()
    c.train.objective = "distill"
    c.model.vision = (
        "demo:english-clip"  # the teacher: its vision side is kept, its text side gives the targets
    )
    c.model.text = "demo:italian-bert"  # the student
    c.model.projection_dim = 64  # the teacher's embedding size
    c.model.max_length = 24
    c.model.text_pooling = "mean"  # an MLM-only BERT's [CLS]/pooler says little (see configs/demo.py)
    c.data.source = "shapes"  # the pictures the demo report evaluates on (never trained on here)
    c.distill.train = "shapes"
    c.distill.val = "shapes:heldout"
    c.train.batch_size = 64
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 5  # keeps both phase ends: the report evaluates after each phase
    c.train.weight_decay = 0.01
    c.phases.warmup = phase(300, r"text_projection\..*", {"head": 1e-2}, warmup_steps=30)
    c.phases.finetune = phase(600, STUDENT, {"head": 1e-3, "text": 5e-4}, warmup_steps=60)
    return c
