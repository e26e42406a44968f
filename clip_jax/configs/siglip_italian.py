"""A SigLIP 2 image tower + an Italian BERT, trained with SigLIP's sigmoid loss in two phases.

    clip-jax train --config siglip_italian --workdir runs/siglip-it \\
        --config.data.train="wds:/data/it/train-{00000..00279}.tar" --config.data.val=jsonl:/data/mscoco-it/val.jsonl

Why: a far stronger and more multilingual image tower than CLIP-Italian's ViT-B/32 (issue 25: on
Crossmodal-3600 Italian text->image R@1, OpenAI ViT-B/32 scores 8.3 and mSigLIP B/16-256 63.5).
- vision: google/siglip2-base-patch16-224, a fixed-resolution SigLIP 2 checkpoint (published in the
  ``siglip`` layout: attention-pooling head, no class token); its vision half is the tower, its
  preprocessing (a resize to 224x224, mean and std 0.5) is kept.
- text: dbmdz/bert-base-italian-xxl-uncased, mean-pooled (the pooler of an MLM-trained BERT learns little in
  phase 1; see clip_italian).
- loss: sigmoid (SigLIP's), with its learned temperature and bias (log 10 and -10 at the start).
- phases: the fresh projections, temperature and bias first (towers frozen), then everything; the image
  tower at a tenth of the text tower's rate, as it is the stronger one.
- our choices, not a published recipe's: phase lengths, learning rates, warm-up steps, max_length 64.
"""

from clip_jax.config import HEAD, base_config, phase


def get_config():
    c = base_config()
    c.model.vision = "google/siglip2-base-patch16-224"
    c.model.text = "dbmdz/bert-base-italian-xxl-uncased"
    c.model.projection_dim = 768
    c.model.text_pooling = "mean"
    c.model.max_length = 64
    c.loss.kind = "sigmoid"
    c.data.source = "files"
    c.data.worker_processes = 8
    c.train.batch_size = 1024
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.eval_every = 1000
    c.phases.warmup = phase(2000, HEAD, {"head": 1e-3}, warmup_steps=200)
    c.phases.finetune = phase(
        20000,
        ".*",
        {"head": 1e-4, "vision": 2e-6, "text": 2e-5},
        warmup_steps=500,
    )
    return c
