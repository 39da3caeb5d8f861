"""The 100-sample evaluation of genie_nb's shipped default model, next to an untrained model and the real chains.

Samples 10 backbones at each of 10 lengths from 50 to 128 (noise scale 0.6, seed 0) from the shipped model and from a
freshly initialised model of the same configuration, evaluates them with `genie_nb.evaluate` (the untrained model's
without TM-scores: its samples are not chains, and TM-align takes an hour on them), and writes to OUT:
`summary.csv` / `summary.md` (one column per set, the targets, pass/fail), `per_sample_<set>.csv`, the figures
`geometry.png`, `rg.png`, `tm_matrix.png`, and `provenance.json` (command, date, model SHA-256, genie_nb version and
git commit, timings). When it evaluates the shipped model it also writes the model card
`genie_nb/default_model/MODEL_CARD.md` from `MODEL_CARD.template.md`, so the card's numbers are the file's own. Samples and their evaluations are written to WORKDIR and reused by a rerun (the evaluation
only while the files it read are unchanged); `--only untrained` prepares the untrained and real columns alone.

    python examples/default_model/make_chains.py chains          # the training / held-out chains
    python examples/default_model/evaluate_default.py --chains chains --out examples/default_model/evaluation
"""
import hashlib, json, os, pickle, subprocess, sys, time, datetime
from pathlib import Path
import numpy as np, pandas as pd, torch
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
from fastcore.script import call_parse
from genie_nb import __version__
from genie_nb.model import Genie
from genie_nb.model_io import DEFAULT_MODEL, atomic_write
from genie_nb.sample import load_model, sample, write_samples, done_samples
from genie_nb.evaluate import (evaluate_folder, summary, load_chains, reference_stats, plot_geometry, plot_rg,
                               plot_tm_matrix, max_tm_to_reference)

LENGTHS = [int(round(x)) for x in np.linspace(50, 128, 10)]  # 50, 59, 67, 76, 85, 93, 102, 111, 119, 128
TARGETS = {  # metric: (comparison, threshold), as issue 6 states them
    'pct_ca_ca_within_0.2A': ('>=', 95), 'pct_clash_free': ('>=', 90), 'pct_rg_within_25pct': ('>=', 90),
    'left_handed_share': ('<', 0.05), 'median_max_tm_to_reference': ('<', 0.6), 'median_pairwise_tm': ('<', 0.5)}
HS_WINDOW = 0.15  # helix + strand fraction: within this of the real chains' own (the target that depends on the data)

def draw(model, outdir:Path, n_per_length:int, seed:int, label:str) -> tuple:
    "Sample (or reuse) n_per_length backbones per length into outdir; returns (PDB files, seconds spent now)."
    t0 = time.time()
    o = getattr(model, 'origin', None) or {}
    remarks = dict(model=o.get('name') or label, epoch=o.get('epoch'), checkpoint_sha256=o.get('sha256'))
    sample(model, LENGTHS, n_per_length, batch_size=n_per_length, noise_scale=0.6, seed=seed, progress=True,
           skip=done_samples(outdir), on_batch=lambda b: write_samples(b, outdir, remarks, 0.6))
    files = sorted(outdir.glob('*.pdb'), key=lambda p: tuple(map(int, p.stem.split('_'))))
    return files, time.time() - t0

def cached_evaluation(cache:Path, items:dict, reference=None, ref_stats=None, tm:bool=True):
    "`evaluate_folder(items, ...)`, reused from `cache` while the chains (name -> file or array) and the options are the same."
    h = hashlib.sha256(repr(tm).encode())
    arrays = [*(reference or []), *(v for _, v in sorted((ref_stats or {}).get('hist', {}).items()))]
    for name, x in [*items.items(), *(('', a) for a in arrays)]:
        h.update(name.encode()); h.update(Path(x).read_bytes() if isinstance(x, (str, Path)) else np.ascontiguousarray(x).tobytes())
    key = h.hexdigest()
    if cache.is_file():
        with open(cache, 'rb') as f: got = pickle.load(f)
        if got['key'] == key: return got['df']
    df = evaluate_folder(items, reference=reference, ref_stats=ref_stats, tm=tm)
    atomic_write(cache, lambda f: pickle.dump(dict(key=key, df=df), f))
    return df

def markdown(table:pd.DataFrame) -> str:
    "A GitHub-markdown table, numbers to 3 significant digits."
    fmt = lambda v: f'{v:.3g}' if isinstance(v, (float, np.floating)) else str(v)
    rows = [['metric', *table.columns], ['---'] * (len(table.columns) + 1)]
    rows += [[str(k), *(fmt(v) for v in r)] for k, r in zip(table.index, table.itertuples(index=False))]
    return '\n'.join('| ' + ' | '.join(r) + ' |' for r in rows)

HERE = Path(__file__).parent

def missed_targets(table:pd.DataFrame, targets:dict) -> str:
    "The targets the trained model misses, each with its value and by how much, for the model card."
    out = []
    for k, (op, thr) in targets.items():
        v = table.loc[k, 'trained']
        if table.loc[k, 'trained meets target'] != 'NO': continue
        gap = abs(v - thr) - HS_WINDOW if op.startswith('within') else abs(v - thr)
        out.append(f'{k} is {v:.3g} (target {op} {thr:.3g}; off by {gap:.3g})')
    return '; '.join(out) if out else 'none'

def write_card(model, table:pd.DataFrame, targets:dict, md_table:str, date:str, n_train:int, export_flags:str=''):
    "Fill `MODEL_CARD.template.md` with the shipped file's facts, its training log and this evaluation."
    path, o = Path(model.origin['path']), model.origin
    m = pd.read_csv(HERE/'metrics.csv')
    tl = m.train_loss.dropna()
    hours = m.elapsed_s.max() / 3600
    card = (HERE/'MODEL_CARD.template.md').read_text().format(
        file_mb=f'{path.stat().st_size/1e6:.2f}', sha256=o['sha256'], weights='EMA weights' if o['ema'] else 'raw weights',
        epoch=o['epoch'], step=o['global_step'], n_params=f'{sum(p.numel() for p in model.parameters()):,}',
        wall=f'{hours:.2f} h of training ({int(m.step.max()):,} steps)', hours=f'{hours:.1f}', n_train=n_train,
        export_flags=export_flags, loss_first=tl.iloc[0], loss_last=tl.iloc[-1], evaltable=md_table, eval_date=date,
        missed=missed_targets(table, targets))
    atomic_write(path.parent/'MODEL_CARD.md', lambda f: f.write(card.encode()))
    return path.parent/'MODEL_CARD.md'

def git_commit() -> str:
    try: return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, check=True,
                               cwd=Path(__file__).parent).stdout.strip()
    except Exception: return 'unknown'

@call_parse
def main(chains:str='chains', # folder written by make_chains.py (train/ and holdout/)
         out:str='examples/default_model/evaluation', # where the table, figures and provenance go
         workdir:str='genie_samples/evaluation', # where the sampled PDB files go (reused by a rerun)
         model:str=None, # model file or run folder to evaluate; default: the shipped default model
         n_per_length:int=10, # samples per length (10 lengths)
         seed:int=0, # sampling seed
         only:str=None, # 'untrained': prepare (sample and evaluate) the untrained and real columns only, write no table
         export_flags:str='', # the flags export_default.py was given, for the model card's command (e.g. ' --epoch 399')
        ):
    t_start = time.time()
    out, work, chains = Path(out), Path(workdir), Path(chains)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ('train', 'holdout'):
        if not any((chains/sub).glob('*.npy')):
            sys.exit(f'{chains/sub}: no chain files (*.npy); write them with: python examples/default_model/make_chains.py {chains}')
    trained = load_model(model) if model else load_model()
    torch.manual_seed(seed)
    untrained = Genie(trained.config).eval()
    train_names, train_cas = load_chains(sorted((chains/'train').glob('*.npy')))
    n_max = trained.config.io.max_n_res     # training kept the chains up to this length: those are the reference
    train_names, train_cas = zip(*[(n, c) for n, c in zip(train_names, train_cas) if n_max is None or len(c) <= n_max])
    hold_names, hold_cas = load_chains(sorted((chains/'holdout').glob('*.npy')))
    ref = reference_stats(train_cas)
    print(f'{len(train_cas)} training chains, {len(hold_cas)} held out; lengths {LENGTHS}', file=sys.stderr)
    tables, timing, files = {}, {}, {}
    for label, m in (('trained', trained), ('untrained', untrained)):
        if only == 'untrained' and label == 'trained': continue
        n_before = len(list((work/label).glob('*.pdb')))
        files[label], timing[f'sampling_{label}_s'] = draw(m, work/label, n_per_length, seed, label)
        timing[f'samples_reused_{label}'] = n_before   # samples found in WORKDIR from an earlier run: not timed here
        t0 = time.time()
        # TM-align needs ~0.36 s per pair on an untrained model's exploded clouds (0.015 s on chains): its ~10,000
        # TM-scores would take an hour and mean nothing (TM-scores of non-chains are ~0.02), so they are left out
        tm_kw = dict(reference=list(train_cas), tm=True) if label == 'trained' else dict(reference=None, tm=False)
        tables[label] = cached_evaluation(work/label/'evaluation.pkl', {f.name: f for f in files[label]}, ref_stats=ref, **tm_kw)
        timing[f'evaluate_{label}_s'] = time.time() - t0
    # real chains: training chains against each other; novelty of the held-out chains against the training ones
    tables['real (training chains)'] = cached_evaluation(work/'real'/'evaluation.pkl', dict(zip(train_names, train_cas)), ref_stats=ref)
    if only == 'untrained': return print(f'untrained and real columns ready in {work}', file=sys.stderr)
    tables = {k: tables[k] for k in ('trained', 'untrained', 'real (training chains)')}
    cols = {k: summary(df)['value'] for k, df in tables.items()}
    table = pd.DataFrame(cols)
    table.loc['median_max_tm_to_reference', 'real (training chains)'] = float(np.median(max_tm_to_reference(hold_cas, list(train_cas))))
    real_hs = table.loc['helix_plus_strand', 'real (training chains)']
    targets = dict(TARGETS, helix_plus_strand=(f'within {HS_WINDOW} of', real_hs))
    def check(metric, v):
        op, thr = targets[metric]
        return {'>=': v >= thr, '<': v < thr}.get(op, abs(v - thr) <= HS_WINDOW)
    table['target'] = [f'{targets[k][0]} {targets[k][1]:.3g}' if k in targets else '' for k in table.index]
    verdict = lambda k, v: '' if k not in targets else 'n/a' if np.isnan(v) else 'yes' if check(k, v) else 'NO'
    table['trained meets target'] = [verdict(k, table.loc[k, 'trained']) for k in table.index]
    table.to_csv(out/'summary.csv', float_format='%.4g')
    for k, df in tables.items():
        df.drop(columns=[c for c in df.columns if c == 'cluster'], errors='ignore') \
          .to_csv(out/f"per_sample_{k.split(' ')[0]}.csv", index=False, float_format='%.4g')
    sha = trained.origin.get('sha256')
    prov = dict(command=' '.join(['python', *sys.argv]), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                model=str(trained.origin.get('path')), model_sha256=sha, model_epoch=trained.origin.get('epoch'),
                model_global_step=trained.origin.get('global_step'), genie_nb_version=__version__, git_commit=git_commit(),
                lengths=LENGTHS, n_per_length=n_per_length, noise_scale=0.6, seed=seed, torch=torch.__version__,
                threads=torch.get_num_threads(), n_training_chains=len(train_cas), n_holdout_chains=len(hold_cas),
                **{k: round(v, 1) for k, v in timing.items()}, total_s=round(time.time() - t_start, 1))
    (out/'provenance.json').write_text(json.dumps(prov, indent=1) + '\n')
    md = [f"# Evaluation of the default model\n", f"`{prov['command']}`  \n{prov['date']}, model SHA-256 `{sha}`, "
          f"genie_nb {__version__} (commit {prov['git_commit'][:12]})\n", markdown(table)]
    (out/'summary.md').write_text('\n'.join(md) + '\n')
    if Path(trained.origin['path']).resolve() == Path(DEFAULT_MODEL).resolve():
        print(f"wrote {write_card(trained, table, targets, markdown(table), prov['date'][:10], len(train_cas), export_flags)}", file=sys.stderr)
    # figures
    fig = plot_geometry(load_chains(files['trained'])[1], ref, 'trained')
    fig.savefig(out/'geometry.png', dpi=120); plt.close(fig)
    fig = plot_rg(tables['trained'], ref); fig.savefig(out/'rg.png', dpi=120); plt.close(fig)
    fig = plot_tm_matrix(tables['trained'], labels=[]); fig.savefig(out/'tm_matrix.png', dpi=120); plt.close(fig)
    print(table.to_string(float_format=lambda v: f'{v:.3g}'))
    print(f"wrote {out}/summary.csv, summary.md, per-sample tables, figures, provenance.json in {prov['total_s']:.0f} s", file=sys.stderr)
