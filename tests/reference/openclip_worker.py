"""The open_clip side of tests/test_openclip.py, run inside the reference environment
(``tests/reference/openclip_env.sh``: open_clip_torch 3.3.0, torch 2.14.1, torchvision 0.29.1) as a subprocess.

    python tests/reference/openclip_worker.py build '{"dir": "...", "model_cfg": {...}, "seed": 0}'
    python tests/reference/openclip_worker.py embed '{"model": "local-dir:...", "inputs": "in.npz", "out": "out.npz"}'

``build`` makes a random open_clip model from ``model_cfg`` (a Hugging Face text tower names a local directory
in ``text_cfg.hf_model_name``), gives every parameter random values (open_clip starts biases and LayerNorms at
constants) and saves it in open_clip's hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``.
``embed`` loads a model with ``open_clip.create_model_and_transforms`` and writes its normalised image and text
embeddings, logit scale and bias for the arrays of ``inputs`` (``pixel_values`` NCHW, ``input_ids``); with
``texts``, also the text embeddings of those strings through open_clip's own tokenizer. Files in and out are
.npz / safetensors / JSON: nothing is pickled.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(args: dict) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory = args["dir"]
    os.makedirs(directory, exist_ok=True)
    config = {"model_cfg": args["model_cfg"], "preprocess_cfg": args.get("preprocess_cfg", {})}
    with open(os.path.join(directory, "open_clip_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    torch.manual_seed(args.get("seed", 0))
    model = open_clip.create_model("local-dir:" + directory)  # no weights there yet: random
    generator = torch.Generator().manual_seed(args.get("seed", 0) + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "logit_scale":
                param.fill_(2.0)  # exp(2) = 7.4, under CLIP's ceiling of 100
            elif name == "logit_bias":
                param.fill_(-3.5)
            else:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.path.join(directory, "open_clip_model.safetensors"))
    print(json.dumps({"keys": sorted(tensors)}))


def embed(args: dict) -> None:
    import numpy as np
    import open_clip
    import torch

    model, _, _ = open_clip.create_model_and_transforms(args["model"])
    model.eval()
    inputs = np.load(args["inputs"])
    out = {}
    with torch.no_grad():
        if "pixel_values" in inputs:
            out["image_embeds"] = model.encode_image(
                torch.from_numpy(inputs["pixel_values"]), normalize=True
            ).numpy()
        if "input_ids" in inputs:
            ids = torch.from_numpy(inputs["input_ids"].astype(np.int64))
            out["text_embeds"] = model.encode_text(ids, normalize=True).numpy()
        if args.get("texts"):
            tokens = open_clip.get_tokenizer(args["model"])(args["texts"])
            out["own_tokenizer_text_embeds"] = model.encode_text(tokens, normalize=True).numpy()
        out["logit_scale"] = np.asarray(model.logit_scale.exp().item(), np.float32)
        if getattr(model, "logit_bias", None) is not None:
            out["logit_bias"] = np.asarray(model.logit_bias.item(), np.float32)
    np.savez(args["out"], **out)
    print(json.dumps({"class": type(model).__name__, "outputs": sorted(out)}))


if __name__ == "__main__":
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    {"build": build, "embed": embed}[command](payload)
