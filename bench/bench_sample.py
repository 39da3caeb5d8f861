"""Sampling speed benchmark (prints figures; not a test).

For the default Genie configuration (4.1 M parameters, T = 1000), in eval mode without autograd:
  * seconds per reverse step, structures per hour (1000 steps) and peak resident memory,
    for N in {64, 128, 256} and batch 1 and 4, on CPU (and CUDA when present);
  * the cost of the original's default job, 10 samples for every length 50..128 in batches of 5,
    with every length padded to 128 (as the original does) and with each length at its own size:
        cost = sum over lengths L of (10 / 5) batches * 1000 steps * step_seconds(L, batch 5)
    where step_seconds(L, 5) is measured at a grid of lengths and interpolated linearly in between.
Each measurement runs in a fresh subprocess so that peak memory (ru_maxrss) is its own.

Usage: python bench/bench_sample.py [--quick] [--threads 2]
"""
import argparse, json, os, resource, subprocess, sys, time

def measure(n, b, steps, device, threads):
    "Runs in a child process: time `steps` reverse steps at length n, batch b."
    import torch
    torch.set_num_threads(threads)
    from genie_nb.config import GenieConfig
    from genie_nb.model import Genie
    from genie_nb.diffusion import Rigid, frenet_frames
    cfg = GenieConfig(); cfg.io.max_n_res = max(n, 128)
    model = Genie(cfg).to(device).eval()
    g = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(b, n, 3, generator=g).to(device) * 10
    mask = torch.ones(b, n, device=device)
    frames = Rigid(frenet_frames(x, mask), x)
    t = torch.full((b,), 500, dtype=torch.long, device=device)
    with torch.no_grad():
        model.p(frames, t, mask)  # warm-up
        if device == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps): frames = model.p(frames, t, mask)
        if device == 'cuda': torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated() if device == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps(dict(n=n, b=b, device=device, step_s=dt, peak_bytes=peak)))

def run(n, b, steps, device, threads):
    out = subprocess.run([sys.executable, __file__, '--child', str(n), str(b), str(steps), device, str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='fewer steps per measurement')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--child', nargs=5)
    a = ap.parse_args()
    if a.child:
        n, b, steps, device, threads = a.child
        return measure(int(n), int(b), int(steps), device, int(threads))
    import torch
    steps = 2 if a.quick else 5
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {a.threads} CPU threads; default configuration, eval mode, no autograd")
    print(f"{'device':>6} {'N':>4} {'B':>2} {'s/step':>8} {'structures/h (1000 steps)':>26} {'peak MB':>8}")
    for device in devices:
        for n in (64, 128, 256):
            for b in (1, 4):
                r = run(n, b, steps, device, a.threads)
                print(f"{device:>6} {n:>4} {b:>2} {r['step_s']:8.3f} {3600 * b / (1000 * r['step_s']):26.1f} {r['peak_bytes'] / 2**20:8.0f}")
    # the original's default job: 10 samples per length 50..128, batch 5
    grid = [50, 64, 80, 96, 112, 128]
    cost = {n: run(n, 5, steps, 'cpu', a.threads)['step_s'] for n in grid}
    def step_s(L):
        lo = max(g for g in grid if g <= L); hi = min(g for g in grid if g >= L)
        return cost[lo] if lo == hi else cost[lo] + (cost[hi] - cost[lo]) * (L - lo) / (hi - lo)
    lengths = range(50, 129)
    own = sum(2 * 1000 * step_s(L) for L in lengths)
    padded = len(lengths) * 2 * 1000 * cost[128]
    print("\nOriginal default job (10 samples x lengths 50..128, batch 5, T = 1000) on CPU:")
    print("  step seconds at batch 5: " + ", ".join(f"N={n}: {cost[n]:.3f}" for n in grid))
    print(f"  every length padded to 128 : {padded / 3600:8.1f} CPU-hours  ({790 * 3600 / padded:.1f} structures/h)")
    print(f"  each length at its own size: {own / 3600:8.1f} CPU-hours  ({790 * 3600 / own:.1f} structures/h)")
    print(f"  speed-up from length cropping: {padded / own:.2f}x")

if __name__ == '__main__':
    main()
