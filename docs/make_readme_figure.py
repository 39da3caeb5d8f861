"""Draws docs/forward_process.png for the README: a real protein chain noised by Genie's forward process.

Usage: python docs/make_readme_figure.py   (needs MDAnalysisTests: pip install --no-deps MDAnalysisTests)
"""
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
import torch
from genie_nb.data import mdanalysis_chain_files, load_ca
from genie_nb.diffusion import Diffusion
from genie_nb.model import centre

ca = torch.tensor(load_ca(mdanalysis_chain_files()[0]))[None]              # [1, n, 3]
mask = torch.ones(ca.shape[:2])
x0 = centre(ca, mask)
diff = Diffusion(1000, 'cosine')
g = torch.Generator().manual_seed(0)
noise = torch.randn(x0.shape, generator=g)
ts = [0, 800, 950, 990, 999]
fig = plt.figure(figsize=(12, 2.8))
for k, t in enumerate(ts):
    xt, _ = diff.q_sample(x0, torch.tensor([t]), mask, noise)
    ax = fig.add_subplot(1, len(ts), k + 1, projection='3d')
    p = xt.trans[0].numpy()
    colors = plt.cm.coolwarm(torch.linspace(0, 1, len(p)).numpy())
    for i in range(len(p) - 1): ax.plot(*p[i:i + 2].T, color=colors[i], lw=1.2)
    ax.set_axis_off(); ax.set_title(f"t = {t}" + ("  (data)" if t == 0 else "  (noise)" if t == 999 else ""), fontsize=10)
fig.suptitle("Genie's forward process on a real chain (Cα trace, N→C blue→red); sampling runs it backwards", fontsize=11)
out = Path(__file__).parent / 'forward_process.png'
fig.savefig(out, dpi=80, bbox_inches='tight')
print(out)
