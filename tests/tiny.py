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
