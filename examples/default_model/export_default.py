"""Ship a trained run as genie_nb's default model: its EMA weights (or raw ones: --raw_weights) and configuration go to
`genie_nb/default_model/genie_default.safetensors`; the run's `metrics.csv` and loss curve go next to this script.

    python examples/default_model/export_default.py runs            # newest version, newest good checkpoint
    python examples/default_model/export_default.py runs --epoch 359
"""
import shutil
from pathlib import Path
from fastcore.script import call_parse
from genie_nb.model_io import load_model, export_safetensors, sha256_file, DEFAULT_MODEL

HERE = Path(__file__).parent

@call_parse
def main(rootdir:str, # runs folder of the training run
         name:str='genie_default', # run name
         version:int=None, # default: newest
         epoch:int=None, # default: newest good checkpoint
         dest:str=str(DEFAULT_MODEL), # where the safetensors file goes
         raw_weights:bool=False, # ship the raw weights even when the checkpoint has EMA weights
        ):
    model = load_model(rootdir, name, version=version, epoch=epoch, use_ema=False if raw_weights else None)
    o = model.origin
    path = export_safetensors(model, dest)
    vdir = Path(rootdir)/name/f"version_{o['version']}"
    for f in ('metrics.csv', 'loss.png'):
        if (vdir/f).is_file(): shutil.copy(vdir/f, HERE/f)
    print(f"{vdir} epoch {o['epoch']} (step {o['global_step']}, EMA {o['ema']}) -> {path} "
          f"({path.stat().st_size/1e6:.2f} MB, SHA-256 {sha256_file(path)})")
