"""Training-step benchmark of genie_nb.train (prints figures; not a test).

Every case runs in a fresh subprocess, so its peak resident memory (`ru_maxrss`) is its own. Each case builds the
DEFAULT Genie model (`GenieConfig()`), runs 1 warm-up step and `--steps` measured steps of the training loop's own
code (`make_batch`, `draw_t_noise`, `GenieLoss`, Adam), and reports seconds per step, real residues per second and
peak memory.

Cases (batch 4):
  mix_own     real MDAnalysisTests length mix (maximumNumResidues 256: all 50 chains), each batch padded to its own
              longest chain (what genie_nb.train does)
  mix_256     the same batches padded to 256 (what the original does)
  *_ckpt      the same with activation checkpointing of the pair stack
  n64         4 chains of 64 residues (compare: the original, 3.4 s/step, peak 3.1 GB on this machine)
  n128        4 chains of 128 residues (the original: 21 s/step, peak 6.0 GB)

Usage:  python bench/bench_train.py [--steps 2] [--cases mix_own,n64,n128,n128_ckpt] [--mem_limit_gb 16]
(a case over the memory limit reports the allocation failure instead of figures)
"""
import argparse, json, os, resource, subprocess, sys, time

CASES = ('mix_own', 'mix_256', 'mix_own_ckpt', 'mix_256_ckpt', 'n64', 'n128', 'n128_ckpt')
REFERENCE = {'n64': (3.4, 3.1), 'n128': (21.0, 6.0)}  # the original Genie on this machine: s/step, peak GB


def peak_gb() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def batches_for(case:str, n_batches:int):
    "A list of `(ca [b, n, 3], mask [b, n], generators)` for `case`."
    import numpy as np, torch
    from genie_nb.data import mdanalysis_chain_files, pad_batch, scan_structures
    from genie_nb.train import epoch_batches, sample_generator
    if case.startswith('mix'):
        ps = scan_structures(mdanalysis_chain_files(), None, 256)
        order = epoch_batches(ps.lengths, 4, seed=100, epoch=0)[:n_batches]
        cas = [[ps.cas[i] for i in b] for b in order]
        pad = 256 if case.startswith('mix_256') else None
    else:
        n = int(case[1:].split('_')[0])
        rng = np.random.default_rng(0)
        cas = [[np.cumsum(rng.normal(size=(n, 3)) * 2.2, 0).astype(np.float32) for _ in range(4)] for _ in range(n_batches)]
        pad = None
    out = []
    for s, chains in enumerate(cas):
        ca, mask = pad_batch(chains, pad_to=pad)                   # [4, n, 3], [4, n]
        out.append((ca, mask, [sample_generator(0, s, i) for i in range(len(chains))]))
    return out


def run_case(case:str, steps:int) -> dict:
    "Measure one case in this process."
    import torch
    from genie_nb.config import GenieConfig
    from genie_nb.model import Genie
    from genie_nb.train import GenieLoss, draw_t_noise
    cfg = GenieConfig()
    cfg.io.max_n_res = 256 if case.startswith('mix') else int(case[1:].split('_')[0])
    cfg.training.activation_checkpointing = case.endswith('_ckpt')
    torch.manual_seed(0)
    genie = Genie(cfg)
    net, opt = GenieLoss(genie), torch.optim.Adam(genie.parameters(), lr=1e-4)
    data = batches_for(case, steps + 1)
    base = peak_gb()
    times, residues, widths = [], [], []
    for ca, mask, gens in data:
        t, noise = draw_t_noise(gens, mask, cfg.diffusion.n_timestep)
        t0 = time.perf_counter()
        loss = net(ca, mask, t, noise, mask.sum())
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        times.append(time.perf_counter() - t0); residues.append(int(mask.sum())); widths.append(mask.shape[1])
    s = sum(times[1:]) / steps
    return dict(case=case, s_per_step=round(s, 2), residues_per_s=round(sum(residues[1:]) / sum(times[1:]), 1),
                peak_gb=round(peak_gb(), 2), base_gb=round(base, 2), padded_to=widths[1:], residues=residues[1:],
                warmup_s=round(times[0], 2), threads=torch.get_num_threads(), n_params=genie.n_params)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=2, help='measured steps per case (after 1 warm-up step)')
    ap.add_argument('--cases', default=','.join(CASES))
    ap.add_argument('--mem_limit_gb', type=float, default=16., help='address-space limit of each case (protects a shared machine)')
    ap.add_argument('--case', help=argparse.SUPPRESS)  # internal: run one case in this process
    a = ap.parse_args()
    if a.case:
        lim = int(a.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        try: res = run_case(a.case, a.steps)
        except (RuntimeError, MemoryError) as e: res = dict(case=a.case, error=f'{type(e).__name__}: {str(e)[:120]}')
        print('RESULT ' + json.dumps(res)); return
    print(f'load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {a.steps} measured steps per case after 1 warm-up')
    print(f"{'case':<13} {'s/step':>7} {'res/s':>7} {'peak GB':>8} {'(base)':>7}  padded to (residues)")
    for case in a.cases.split(','):
        r = subprocess.run([sys.executable, __file__, '--case', case, '--steps', str(a.steps), '--mem_limit_gb', str(a.mem_limit_gb)],
                           capture_output=True, text=True)
        line = next((l for l in r.stdout.splitlines() if l.startswith('RESULT ')), None)
        if line is None: print(f'{case:<13} failed (exit {r.returncode}): {r.stderr.strip()[-300:]}'); continue
        res = json.loads(line[7:])
        if 'error' in res: print(f"{case:<13} {res['error']}"); continue
        ref = f"   [original: {REFERENCE[case][0]} s/step, {REFERENCE[case][1]} GB]" if case in REFERENCE else ''
        print(f"{case:<13} {res['s_per_step']:>7.2f} {res['residues_per_s']:>7.1f} {res['peak_gb']:>8.2f} {res['base_gb']:>7.2f}  "
              f"{res['padded_to']} ({res['residues']}){ref}", flush=True)


if __name__ == '__main__': main()
