"""Curate the training chains of genie_nb's default model from the PDB files that MDAnalysisTests ships.

Every protein-containing PDB/mmCIF file under `MDAnalysisTests/data` is read with `genie_nb.data.load_backbone`
(first model, standard residues, split at chain breaks). Segments of 40-256 residues are kept, then deduplicated by
sequence: a segment is dropped when it is at least 90 % identical (over the shorter one) to a longer segment already
kept. A fixed seed holds a few chains out. The chains are written as Genie coordinate files into OUT/train and OUT/holdout,
and the manifest `chains.tsv` (name, file, segment, length, split, sequence) next to this script records what was used.

    python examples/default_model/make_chains.py OUT
"""
import sys, importlib.util, warnings
from pathlib import Path
import numpy as np
from Bio.Align import PairwiseAligner
from Bio.PDB.Polypeptide import three_to_index, index_to_one
from genie_nb.data import (first_model, protein_residues, chain_backbone, split_segments, save_genie_coords,
                           split_holdout, StructureError)

MIN_LEN, MAX_LEN, IDENTITY, N_HOLDOUT, SEED = 40, 256, 0.9, 6, 0
SKIP = ('failing', 'wrong_hydrogens', 'invalid', '_short', 'adk_open_10res', 'RANDOM_WALK')  # broken or cut copies

def data_dir() -> Path:
    spec = importlib.util.find_spec('MDAnalysisTests')
    if spec is None: raise SystemExit('MDAnalysisTests is not installed: pip install --no-deps MDAnalysisTests==2.11.0')
    return Path(list(spec.submodule_search_locations)[0])/'data'

def candidate_files(root:Path) -> list:
    ok = ('.pdb', '.pdb.gz', '.cif', '.cif.gz', '.ent')
    return sorted(p for p in root.rglob('*') if p.is_file() and p.name.endswith(ok) and not any(s in p.name for s in SKIP))

def chain_segments(path) -> list:
    "`(name, backbone [n, 3, 3], sequence)` of each continuous segment, named as `genie_nb.data.load_backbone` names them."
    out = []
    for c in first_model(path):
        res, bb = protein_residues(c), chain_backbone(c)
        spans = split_segments(bb)
        for k, (s, e) in enumerate(spans):
            seq = ''.join(index_to_one(three_to_index(r.get_resname())) for r in res[s:e])
            out.append((c.id if len(spans) == 1 else f'{c.id}:{k}', bb[s:e], seq))
    return out

def main(out:str):
    root, out = data_dir(), Path(out)
    segs = []  # (file, name, coords [n, 3, 3], sequence)
    for f in candidate_files(root):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                found = chain_segments(f)
        except (StructureError, ValueError, KeyError): continue
        segs += [(f.relative_to(root).as_posix(), name, bb, seq) for name, bb, seq in found if MIN_LEN <= len(bb) <= MAX_LEN]
    segs.sort(key=lambda s: (-len(s[2]), s[0], s[1]))
    aligner = PairwiseAligner(mode='global', match_score=1, mismatch_score=0, open_gap_score=0, extend_gap_score=0)
    kept = []
    for s in segs:
        dup = any(s[3] and k[3] and aligner.score(s[3], k[3]) >= IDENTITY*min(len(s[3]), len(k[3])) for k in kept)
        if not dup: kept.append(s)
    names = [f'{Path(f).name.split(".")[0]}_{n.replace(":", "-")}' for f, n, _, _ in kept]
    assert len(set(names)) == len(names)
    train, hold = split_holdout(names, n_val=N_HOLDOUT, seed=SEED)
    hold = set(hold)
    rows = ['name\tfile\tsegment\tlength\tsplit\tsequence']
    for name, (f, n, bb, seq) in zip(names, kept):
        split = 'holdout' if name in hold else 'train'
        (out/split).mkdir(parents=True, exist_ok=True)
        save_genie_coords(out/split/f'{name}.npy', bb[:, 1])
        rows.append(f'{name}\t{f}\t{n}\t{len(bb)}\t{split}\t{seq}')
    (Path(__file__).parent/'chains.tsv').write_text('\n'.join(rows) + '\n')
    lens = np.array([len(s[2]) for s in kept])
    print(f'{len(segs)} segments of {MIN_LEN}-{MAX_LEN} residues -> {len(kept)} after dedup at {IDENTITY:.0%} identity: '
          f'{len(kept)-len(hold)} train, {len(hold)} holdout; lengths {lens.min()}-{lens.max()}, median {np.median(lens):.0f} -> {out}')

if __name__ == '__main__': main(sys.argv[1] if len(sys.argv) > 1 else 'default_model_chains')
