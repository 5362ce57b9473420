"""Edit notebooks as plain text and back: `python tools/nbtext.py to-text nbs/X.ipynb [...]`
writes `.nbsrc/X.py`; `python tools/nbtext.py to-nb .nbsrc/X.py [...]` writes `nbs/X.ipynb`.

Cells are separated by `# %%` (code) or `# %% [markdown]` lines; markdown lines are commented
with `# ` (as jupytext's percent format does), so the text file is valid Python.
Cell ids are derived from the cell source, so unchanged cells keep their ids."""
import hashlib, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC, NBS = ROOT/'.nbsrc', ROOT/'nbs'
_KERNEL = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}


def to_text(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    out = []
    for c in nb['cells']:
        out.append('# %% [markdown]' if c['cell_type'] == 'markdown' else '# %%')
        src = ''.join(c['source']).rstrip('\n')
        if c['cell_type'] == 'markdown':
            src = '\n'.join(f'# {ln}'.rstrip() for ln in src.splitlines())
        out.append(src)
        out.append('')
    dest = SRC/Path(nb_path).resolve().relative_to(NBS).with_suffix('.py')
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text('\n'.join(out))
    return dest


def to_nb(src_path):
    cells, cur, kind = [], None, None
    for line in Path(src_path).read_text().splitlines():
        if line in ('# %%', '# %% [markdown]'):
            if cur is not None: cells.append((kind, cur))
            cur, kind = [], ('markdown' if line.endswith(']') else 'code')
        elif cur is not None: cur.append(line)
    if cur is not None: cells.append((kind, cur))
    seen, nb_cells = set(), []
    for kind, lines in cells:
        if kind == 'markdown':
            # `# text` -> `text` and a bare `#` -> an empty line; any other line is kept as
            # written (stripping its `#`s turned a `## Heading` typed uncommented into text)
            lines = [ln[2:] if ln.startswith('# ') else '' if ln == '#' else ln for ln in lines]
        src = '\n'.join(lines).strip('\n')
        h = hashlib.sha1(src.encode()).hexdigest()
        i = 0
        while h[i:i+8] in seen: i += 1
        cid = h[i:i+8]
        seen.add(cid)
        cell = {'cell_type': kind, 'id': cid, 'metadata': {},
                'source': src.splitlines(keepends=True)}
        if kind == 'code': cell.update(execution_count=None, outputs=[])
        nb_cells.append(cell)
    nb = {'cells': nb_cells, 'metadata': _KERNEL, 'nbformat': 4, 'nbformat_minor': 5}
    dest = NBS/Path(src_path).resolve().relative_to(SRC).with_suffix('.ipynb')
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + '\n')
    return dest


if __name__ == '__main__':
    cmd, *paths = sys.argv[1:]
    f = {'to-text': to_text, 'to-nb': to_nb}[cmd]
    for p in paths: print(f(p))
