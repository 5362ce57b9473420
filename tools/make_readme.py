"""Write README.md from nbs/index.ipynb without Quarto (`nbdev-readme` needs it).

`python tools/make_readme.py` writes README.md; `--check` exits 1 when README.md is out of date.
Markdown cells are copied; code cells become fenced blocks (`#|` directives removed; cells marked
`#| hide` are left out; `!cmd` and `%%bash` cells are shown as bash)."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ('<!-- Generated from nbs/index.ipynb by `python tools/make_readme.py`; '
          'edit the notebook. -->\n\n')


def render(nb_path=ROOT/'nbs'/'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        lines = src.splitlines()
        directives = [ln[2:].strip() for ln in lines if ln.startswith('#|')]
        if c['cell_type'] == 'markdown':
            parts.append(src.strip())
            continue
        names = [d.split(':')[0].strip() for d in directives]
        if any(n in ('hide', 'export', 'exporti') for n in names): continue
        body = [ln for ln in lines if not ln.startswith('#|')]
        if not any(ln.strip() for ln in body): continue
        if body[0].startswith('%%bash'): lang, body = 'bash', body[1:]
        elif all(ln.startswith('!') or not ln.strip() for ln in body):
            lang, body = 'bash', [ln[1:] for ln in body]
        else: lang = 'python'
        parts.append(f'```{lang}\n' + '\n'.join(body).strip('\n') + '\n```')
    return HEADER + '\n\n'.join(p for p in parts if p) + '\n'


if __name__ == '__main__':
    text, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: '
                     'run `python tools/make_readme.py`')
        print('README.md matches nbs/index.ipynb')
    else:
        readme.write_text(text)
        print(f'wrote {readme}')
