"A stand-in CLIP for loop-level tests: linear image tower on 3x4x4 images, bag-of-embeddings text tower."
import torch, torch.nn as nn


class TinyCLIP(nn.Module):
    def __init__(self, d: int = 8, vocab: int = 20):
        super().__init__()
        self.visual = nn.Sequential(nn.Flatten(), nn.Linear(48, d))
        self.tok = nn.Embedding(vocab, d)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, x): return self.visual(x)

    def encode_text(self, t): return self.tok(t).mean(1)


def register_c16() -> str:
    "The tests' frozen tiny CLIP (width 96, context 16): the numbers tests assert were measured on it."
    from dive_nb.tiny import register_tiny_model, tiny_config
    register_tiny_model("dive-tiny-vit-c16", tiny_config(width=96, context_length=16),
                        {"channels": (32, 64), "depth": 1, "norm": "group", "colour_path": True}, "tests' frozen configuration")
    return "dive-tiny-vit-c16"


def register_plain_c16() -> str:
    "A plain ViT (no conv stem) with the tests' frozen text configuration (context 16)."
    from dive_nb.tiny import register_tiny_model, tiny_config
    register_tiny_model("dive-tiny-vit-plain-c16", tiny_config(width=96, context_length=16), None, "tests' frozen configuration")
    return "dive-tiny-vit-plain-c16"
