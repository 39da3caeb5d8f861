"Fault and integration tests for genie_nb.data, on real MDAnalysisTests chains (no downloads, no skips)."
import gzip, os, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio.PDB import MMCIFIO, PDBParser

from genie_nb.data import (ChainDataset, StructureError, crop_or_pad, first_model, load_backbone, load_ca,
                           load_genie_coords, mdanalysis_chain_files, pad_batch, protein_residues, random_crop,
                           save_genie_coords, scan_structures, split_holdout, split_segments)

REAL = mdanalysis_chain_files()
AHS = next(p for p in REAL if p.name == '1ahsA.pdb.gz')  # chain A, residues 126-251 (126 residues)


def real_text(path=AHS) -> str: return gzip.decompress(path.read_bytes()).decode()


def atom_line(serial, name, resname, chain, resseq, xyz, icode=' ', altloc=' ', occ=1.0, record='ATOM'):
    "One fixed-column PDB ATOM/HETATM record."
    x, y, z = xyz
    return (f'{record:<6}{serial:5d}  {name:<3}{altloc}{resname:>3} {chain}{resseq:4d}{icode}   '
            f'{x:8.3f}{y:8.3f}{z:8.3f}{occ:6.2f}{20.0:6.2f}           {name[0]}')


def scan_quiet(*args, **kwargs):
    "scan_structures, returning (ProteinSet, list of warning messages)."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ps = scan_structures(*args, **kwargs)
    return ps, [str(w.message) for w in caught]


# ---------------------------------------------------------------- bad files

def _water_ligand_pdb() -> str:
    lines = [atom_line(1, 'O', 'HOH', 'A', 301, (1., 2., 3.), record='HETATM'),
             atom_line(2, 'O', 'HOH', 'A', 302, (4., 2., 3.), record='HETATM'),
             atom_line(3, 'C1', 'NAG', 'B', 1, (0., 0., 0.), record='HETATM'),
             atom_line(4, 'C2', 'NAG', 'B', 1, (1.5, 0., 0.), record='HETATM')]
    return '\n'.join(lines + ['END']) + '\n'


def _bad_files() -> dict:
    "file name -> (bytes, expected reason)."
    gz = AHS.read_bytes()
    text = real_text()
    cut = text.index('\n', len(text)//2) + 40                 # inside a coordinate field
    assert text[cut-40:cut].startswith('\nATOM') or text[cut-39:cut].startswith('ATOM')
    return {
        'empty.pdb': (b'', 'empty file'),
        'junk.pdb': (np.random.default_rng(0).bytes(3000), 'not text'),
        'notes.pdb': (b'This is a lab notebook page.\nNo coordinates here.\n', 'not a structure'),
        'water_ligand.pdb': (_water_ligand_pdb().encode(), 'no protein'),
        'truncated.pdb.gz': (gz[:len(gz)//2], 'parse error'),
        'truncated.pdb': (text[:cut].encode(), 'parse error'),
        'notes.cif': (b'just words, no data_ block\n', 'parse error'),
        'words.npy': (b'0.1,0.2\nnot numbers\n', 'parse error'),
        'binary.npy': (b'\x93NUMPY\x01\x00v\x00' + bytes(100), 'not text'),
    }


def test_each_bad_file_warns_and_is_counted(tmp_path):
    good = REAL[:2]
    for f in good: (tmp_path/f.name).write_bytes(f.read_bytes())
    bad = _bad_files()
    for name, (data, _) in bad.items(): (tmp_path/name).write_bytes(data)
    ps, msgs = scan_quiet(tmp_path)
    assert ps.names == [f'{f.name}:{f.name[4]}' for f in good]     # good files kept
    assert ps.summary.n_files == len(good) + len(bad) and ps.summary.n_files_read == len(good)
    got = {name: reason for name, reason, _ in ps.summary.skipped_files}
    assert got == {name: reason for name, (_, reason) in bad.items()}
    assert len(msgs) == len(bad)
    for name in bad:                                                # each warning names its file
        assert sum(str(tmp_path/name) + ':' in m for m in msgs) == 1, name
    printed = str(ps.summary)
    assert 'parse error 4' in printed and 'empty file 1' in printed and 'no protein 1' in printed


@pytest.mark.parametrize('name', list(_bad_files()))
def test_bad_file_alone_never_raises(tmp_path, name):
    data, reason = _bad_files()[name]
    (tmp_path/name).write_bytes(data)
    ps, msgs = scan_quiet([tmp_path/name, AHS])
    assert ps.names == ['1ahsA.pdb.gz:A']
    assert ps.summary.file_reasons() == {reason: 1}
    assert len(msgs) == 1 and name in msgs[0] and reason in msgs[0]
    with pytest.raises(StructureError, match=name):               # the single-file loaders raise, naming the file
        load_ca(tmp_path/name)


def test_missing_and_unsupported_paths(tmp_path):
    (tmp_path/'readme.txt').write_text('hello')
    ps, msgs = scan_quiet([tmp_path/'nope.pdb', tmp_path/'readme.txt', AHS])
    assert ps.summary.file_reasons() == {'missing file': 1, 'unsupported format': 1}
    assert len(ps) == 1 and len(msgs) == 2
    assert scan_quiet(tmp_path)[0].summary.n_files == 0            # a folder scan ignores unsupported names


# ---------------------------------------------------------------- formats

def test_mmcif_roundtrip_matches_pdb(tmp_path):
    s = PDBParser(QUIET=True).get_structure('x', str(_plain_copy(AHS, tmp_path)))
    io = MMCIFIO(); io.set_structure(s); io.save(str(tmp_path/'1ahs.cif'))
    (tmp_path/'1ahs.cif.gz').write_bytes(gzip.compress((tmp_path/'1ahs.cif').read_bytes()))
    (cid_p, bb_p), = load_backbone(AHS)
    for cif in ['1ahs.cif', '1ahs.cif.gz']:
        (cid_c, bb_c), = load_backbone(tmp_path/cif)
        assert cid_c == cid_p == 'A'
        np.testing.assert_allclose(bb_c, bb_p, atol=1e-3)
        np.testing.assert_allclose(load_ca(tmp_path/cif), bb_p[:, 1], atol=1e-3)


def _plain_copy(path, d) -> Path:
    out = Path(d)/path.name[:-3]
    out.write_bytes(gzip.decompress(path.read_bytes()))
    return out


def test_gzipped_and_plain_identical(tmp_path):
    for f in REAL[:3]:
        plain = _plain_copy(f, tmp_path)
        (a_id, a), = load_backbone(f)
        (b_id, b), = load_backbone(plain)
        assert a_id == b_id and a.dtype == np.float32 and a.shape[1:] == (3, 3)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(load_ca(f), load_ca(plain))


def test_real_chain_geometry():
    for f in REAL[::10]:
        ca = load_ca(f)
        d = np.linalg.norm(ca[1:] - ca[:-1], axis=-1)
        assert ca.dtype == np.float32 and 70 < len(ca) < 180
        assert abs(np.median(d) - 3.8) < 0.05


def test_genie_text_formats(tmp_path):
    (_, bb), = load_backbone(AHS)
    save_genie_coords(tmp_path/'d1ahsa_.npy', bb)
    raw = np.loadtxt(tmp_path/'d1ahsa_.npy', delimiter=',')          # the original's load_coord
    assert raw.shape == (3*len(bb), 3)
    np.testing.assert_array_equal(raw[1::3].astype(np.float32), bb[:, 1])  # the original's Cα rows
    np.testing.assert_array_equal(load_genie_coords(tmp_path/'d1ahsa_.npy'), bb)
    np.testing.assert_array_equal(load_ca(tmp_path/'d1ahsa_.npy'), bb[:, 1])
    (cid, bb2), = load_backbone(tmp_path/'d1ahsa_.npy')
    assert cid == 'A'; np.testing.assert_array_equal(bb2, bb)
    # a sampled design: Cα only, '%.3f', as genie/sample.py writes (126 rows: divisible by 3, still a trace)
    np.savetxt(tmp_path/'126_0.npy', bb[:, 1], fmt='%.3f', delimiter=',')
    np.testing.assert_allclose(load_ca(tmp_path/'126_0.npy'), bb[:, 1], atol=5e-4)
    with pytest.raises(StructureError, match='Cα trace only'): load_backbone(tmp_path/'126_0.npy')
    ps, msgs = scan_quiet(tmp_path)
    assert ps.names == ['126_0.npy:A', 'd1ahsa_.npy:A'] and not msgs
    # gzipped Genie text reads the same
    (tmp_path/'g.npy.gz').write_bytes(gzip.compress((tmp_path/'d1ahsa_.npy').read_bytes()))
    np.testing.assert_array_equal(load_genie_coords(tmp_path/'g.npy.gz'), bb)


def test_ca_only_pdb_reads_with_load_ca(tmp_path):
    "The original evaluation pipeline writes Cα-only PDB files; load_ca reads them, the backbone rule rejects them."
    ca = load_ca(AHS)
    lines = [atom_line(i+1, 'CA', 'ALA', 'A', i+1, xyz) for i, xyz in enumerate(ca)]
    (tmp_path/'design.pdb').write_text('\n'.join(lines) + '\n')
    np.testing.assert_allclose(load_ca(tmp_path/'design.pdb'), ca, atol=1e-3)
    ps, msgs = scan_quiet([tmp_path/'design.pdb'])
    assert ps.summary.file_reasons() == {'no complete backbone': 1} and 'design.pdb' in msgs[0]


# ---------------------------------------------------------------- residue selection

def _tiny_pdb() -> tuple:
    "A 6-residue chain with insertion codes, an altloc CA, water, a ligand and a second model."
    ca = load_ca(AHS)[:6]
    (_, bb), = load_backbone(AHS)
    bb = bb[:6]
    ids = [(52, ' '), (52, 'A'), (52, 'B'), (53, ' '), (54, ' '), (55, ' ')]
    lines, serial = ['MODEL        1'], 1
    alt_shift = np.array([0.3, 0., 0.], dtype=np.float32)
    for (resseq, icode), res in zip(ids, bb):
        for name, xyz in zip(['N', 'CA', 'C'], res):
            if (resseq, icode) == (52, 'B') and name == 'CA':      # altlocs: A (occ 0.4) first, B (occ 0.6) wins
                lines.append(atom_line(serial, name, 'GLY', 'A', resseq, xyz - alt_shift, icode, 'A', 0.4)); serial += 1
                lines.append(atom_line(serial, name, 'GLY', 'A', resseq, xyz, icode, 'B', 0.6)); serial += 1
            else:
                lines.append(atom_line(serial, name, 'GLY', 'A', resseq, xyz, icode)); serial += 1
    lines.append(atom_line(serial, 'O', 'HOH', 'A', 401, (9., 9., 9.), record='HETATM')); serial += 1
    lines.append(atom_line(serial, 'C1', 'NAG', 'A', 402, (8., 9., 9.), record='HETATM')); serial += 1
    lines += ['ENDMDL', 'MODEL        2']
    lines += [atom_line(900+i, 'CA', 'GLY', 'A', 60+i, (i*3.8, 50., 50.)) for i in range(3)]
    lines += ['ENDMDL', 'END']
    return '\n'.join(lines) + '\n', bb, ids


def test_altloc_insertion_codes_first_model(tmp_path):
    text, bb, ids = _tiny_pdb()
    (tmp_path/'tiny.pdb').write_text(text)
    model = first_model(tmp_path/'tiny.pdb')
    got_ids = [(r.id[1], r.id[2]) for r in protein_residues(model['A'])]
    assert got_ids == ids                                           # file order, insertion codes kept, no water/ligand
    (cid, got), = load_backbone(tmp_path/'tiny.pdb', min_len=1)
    assert cid == 'A' and got.shape == (6, 3, 3)
    np.testing.assert_allclose(got, bb, atol=1e-3)                  # altloc B (higher occupancy) chosen
    np.testing.assert_allclose(load_ca(tmp_path/'tiny.pdb'), bb[:, 1], atol=1e-3)  # model 2 ignored
    with pytest.raises(StructureError, match='no complete backbone'):  # 6 residues < default MIN_SEGMENT_LEN
        load_backbone(tmp_path/'tiny.pdb')


def test_altloc_tie_takes_first(tmp_path):
    text, bb, _ = _tiny_pdb()
    text = text.replace('  0.40', '  0.50').replace('  0.60', '  0.50')
    (tmp_path/'tie.pdb').write_text(text)
    (_, got), = load_backbone(tmp_path/'tie.pdb', min_len=1)
    np.testing.assert_allclose(got[2, 1], bb[2, 1] - [0.3, 0, 0], atol=1e-3)


# ---------------------------------------------------------------- segment rule

def _holed_pdb(tmp_path) -> Path:
    "1ahsA without residues 150-151 (a 2-residue gap) and without the N of residue 200."
    keep = []
    for line in real_text().splitlines():
        if line.startswith('ATOM'):
            resseq, name = int(line[22:26]), line[12:16].strip()
            if resseq in (150, 151) or (resseq == 200 and name == 'N'): continue
        keep.append(line)
    out = tmp_path/'holed.pdb'
    out.write_text('\n'.join(keep) + '\n')
    return out


def test_chain_break_split(tmp_path):
    holed = _holed_pdb(tmp_path)
    segs = load_backbone(holed)
    assert [(cid, len(x)) for cid, x in segs] == [('A:0', 24), ('A:1', 48), ('A:2', 51)]  # 126-149, 152-199, 201-251
    for _, x in segs:                                                # no jump inside a kept segment
        assert np.linalg.norm(x[1:, 1] - x[:-1, 1], axis=-1).max() <= 4.2
    assert len(load_ca(holed)) == 124                                # load_ca reads, it does not split
    ps, msgs = scan_quiet([holed], min_len=30)
    assert ps.names == ['holed.pdb:A:1', 'holed.pdb:A:2'] and not msgs
    assert ps.summary.skipped_chains == [('holed.pdb:A:0', 'short segment', 24)]
    ps, _ = scan_quiet([holed], min_n_res=30, max_n_res=50)
    assert ps.names == ['holed.pdb:A:1'] and ps.summary.chain_reasons() == {'too short': 1, 'too long': 1}


def test_split_segments_edge_cases():
    ca = np.arange(15, dtype=np.float32)[:, None]*np.array([3.8, 0, 0], dtype=np.float32)
    assert split_segments(ca) == [(0, 15)]
    ca2 = ca.copy(); ca2[0] = np.nan; ca2[-1] = np.nan
    assert split_segments(ca2) == [(1, 14)]
    assert split_segments(np.full((4, 3), np.nan, dtype=np.float32)) == []
    assert split_segments(np.zeros((0, 3), dtype=np.float32)) == []


# ---------------------------------------------------------------- filters, cache

def test_length_filter_semantics():
    ps, _ = scan_quiet(REAL, max_n_res=128)
    assert len(ps) == 15 and ps.lengths.max() <= 128
    ps, _ = scan_quiet(REAL, min_n_res=150)
    assert ps.lengths.min() >= 150 and len(ps) + ps.summary.chain_reasons()['too short'] == 50


def _copy_real(d: Path, files) -> None:
    d.mkdir(exist_ok=True)
    for f in files: (d/f.name).write_bytes(f.read_bytes())


def test_cache_hit_and_invalidation(tmp_path):
    data, cache = tmp_path/'data', tmp_path/'cache'
    _copy_real(data, REAL[:8])
    a, _ = scan_quiet(data, max_n_res=160, cache_dir=cache)
    assert not a.summary.from_cache and sorted(p.name for p in cache.iterdir()) == ['proteinset.json', 'proteinset.npz']
    t0 = time.perf_counter(); b, _ = scan_quiet(data, max_n_res=160, cache_dir=cache); dt = time.perf_counter() - t0
    assert b.summary.from_cache and dt < 0.5, dt
    assert b.names == a.names and b.summary == a.summary and b.settings == a.settings
    for x, y in zip(a.cas, b.cas): assert x.dtype == y.dtype == np.float32; np.testing.assert_array_equal(x, y)
    # touch (same bytes, new mtime) -> rebuild
    f = data/REAL[0].name
    st = f.stat(); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c, _ = scan_quiet(data, max_n_res=160, cache_dir=cache)
    assert not c.summary.from_cache and c.names == a.names
    assert scan_quiet(data, max_n_res=160, cache_dir=cache)[0].summary.from_cache
    # changed content -> rebuild with the new coordinates
    f.write_bytes(gzip.compress(real_text(REAL[0]).replace('ATOM      2  CA  THR A 126      47.257',
                                                           'ATOM      2  CA  THR A 126      47.757').encode()))
    d, _ = scan_quiet(data, max_n_res=160, cache_dir=cache)
    assert not d.summary.from_cache
    np.testing.assert_allclose(d.cas[0][0, 0] - a.cas[0][0, 0], 0.5, atol=1e-4)
    # added file, other filters -> rebuild
    _copy_real(data, REAL[8:9])
    e, _ = scan_quiet(data, max_n_res=160, cache_dir=cache)
    assert not e.summary.from_cache and e.summary.n_files == 9
    g, _ = scan_quiet(data, max_n_res=140, cache_dir=cache)
    assert not g.summary.from_cache and len(g) < len(e)
    # a corrupt index is rebuilt, never raised; no temporary files are left behind
    (cache/'proteinset.json').write_text('{not json')
    h, _ = scan_quiet(data, max_n_res=140, cache_dir=cache)
    assert not h.summary.from_cache and h.names == g.names
    assert sorted(p.name for p in cache.iterdir()) == ['proteinset.json', 'proteinset.npz']


def test_cache_keeps_skip_summary(tmp_path):
    data = tmp_path/'data'
    _copy_real(data, REAL[:2])
    (data/'empty.pdb').write_text('')
    a, msgs = scan_quiet(data, cache_dir=tmp_path/'c')
    b, _ = scan_quiet(data, cache_dir=tmp_path/'c')
    assert len(msgs) == 1 and b.summary.from_cache
    assert b.summary.skipped_files == a.summary.skipped_files == [('empty.pdb', 'empty file', '')]


# ---------------------------------------------------------------- batching

def test_crop_determinism_and_no_global_rng():
    ca = load_ca(AHS)
    def crop(seed):
        torch.manual_seed(seed + 1000); np.random.seed(seed + 7)   # global RNGs must not matter
        return random_crop(ca, 64, torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(crop(3), crop(3))
    windows = {tuple(crop(s)[0]) for s in range(30)}
    assert len(windows) > 10                                       # different seeds give different windows
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    x1, m1 = crop_or_pad([ca, ca[:100]], min_n_res=64, generators=gens)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    x2, _ = crop_or_pad([ca, ca[:100]], min_n_res=64, generators=gens)
    assert torch.equal(x1, x2) and x1.shape == (2, 64, 3) and m1.all()
    # every crop is a contiguous window of the chain
    for s in range(5):
        w = random_crop(ca, 64, torch.Generator().manual_seed(s))
        start = int(np.flatnonzero((ca == w[0]).all(1))[0])
        np.testing.assert_array_equal(w, ca[start:start+64])


def test_pad_batch_and_dataset():
    ps, _ = scan_quiet(REAL[:6])
    ds = ChainDataset(ps)
    items = [ds[i] for i in range(len(ds))]
    assert [it['index'] for it in items] == list(range(6)) and items[0]['name'] == ps.names[0]
    ca, mask = pad_batch([it['ca'] for it in items])
    assert ca.dtype == mask.dtype == torch.float32 and ca.shape == (6, max(ps.lengths), 3)
    assert mask.sum(1).tolist() == ps.lengths.tolist()
    assert (ca[mask == 0] == 0).all()
    with pytest.raises(ValueError, match='exceed pad_to=128'): pad_batch([it['ca'] for it in items], pad_to=128)
    with pytest.raises(IndexError): ds[len(ds)]


def test_split_holdout_deterministic():
    names = [f'c{i}' for i in range(40)]
    tr, va = split_holdout(names, fraction=0.25, seed=3)
    assert len(va) == 10 and sorted(tr + va) == sorted(names)
    assert split_holdout(names, fraction=0.25, seed=3) == (tr, va)
    assert set(split_holdout(names[::-1], n_val=10, seed=3)[1]) == set(va)
    with pytest.raises(ValueError, match='exactly one'): split_holdout(names)
