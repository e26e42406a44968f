"""Continue open_clip's xlm-roberta-base-ViT-B-32 (LAION-5B) contrastively on Italian image-caption data.

    clip-jax train --config openclip_xlmr_italian --workdir runs/openclip-xlmr-it \\
        --config.data.train="wds:/data/it/train-{00000..00279}.tar" --config.data.val=jsonl:/data/mscoco-it/val.jsonl

Why: a multilingual starting point that already reads Italian (issue 25: Crossmodal-3600 Italian text->image
R@1 58.4, against 8.3 for OpenAI's ViT-B/32, CLIP_benchmark's table).
- init_from: the whole open_clip model in its hub layout (open_clip_config.json + open_clip_model.safetensors):
  open_clip's ViT-B/32 (768 wide, 12 layers, patch 32, 224 px, GELU), an XLM-R base text tower mean-pooled
  (hf_pooler_type mean_pooler; its architecture is clip_jax's copy of xlm-roberta-base's config.json), open_clip's
  default MLP text head (hf_proj_type 'mlp': Linear 768->640, GELU, Linear 640->512; model.text_projection='mlp'),
  512-d embeddings, max_length 77 (open_clip's context length); the temperature comes with it. A model of this
  architecture with a linear head (hf_proj_type 'linear') runs with --config.model.text_projection=linear.
- Out: `clip-jax export --format open_clip` (open_clip loads it as it loaded the start) or clip_jax's own format;
  transformers' VisionTextDualEncoderModel has no MLP text head (nor mean pooling).
- loss: softmax (open_clip trained this model with CLIP's loss), set explicitly so that the run needs no
  look-up of the checkpoint's config to choose it.
- phases: a short warm-up of the projections and temperature (towers frozen), then everything, the image tower
  at a tenth of the text tower's rate; our choices, not a published recipe's.
"""

from clip_jax.config import HEAD, base_config, phase

CHECKPOINT = "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"


def get_config():
    c = base_config()
    c.model.init_from = CHECKPOINT
    c.model.projection_dim = 512
    c.model.text_pooling = "mean"
    c.model.text_projection = "mlp"
    c.model.max_length = 77
    c.loss.kind = "softmax"
    c.data.source = "files"
    c.data.worker_processes = 8
    c.train.batch_size = 1024
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.eval_every = 1000
    c.phases.warmup = phase(1000, HEAD, {"head": 1e-4}, warmup_steps=100)
    c.phases.finetune = phase(
        20000,
        ".*",
        {"head": 1e-5, "vision": 1e-6, "text": 1e-5},
        warmup_steps=500,
    )
    return c
