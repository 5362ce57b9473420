"""Write README.md from nbs/index.ipynb without Quarto (`nbdev-readme` needs it).

`python tools/make_readme.py` writes README.md; `--check` exits 1 when README.md is out of date.
Markdown cells are copied; code cells become fenced blocks (`#|` directives removed; cells marked
`#| hide` are left out; `!cmd` and `%%bash` cells are shown as bash). Links to the docs pages
(`cli.html#ml-split`, `tutorials/own_images.html`) become absolute URLs on the docs site (nbdev's
`doc_host` + `doc_baseurl`), so they work on GitHub and PyPI too."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ('<!-- Generated from nbs/index.ipynb by `python tools/make_readme.py`; '
          'edit the notebook. -->\n\n')


def docs_url() -> str:
    "The docs site's URL, as nbdev reads it from pyproject.toml."
    from nbdev.config import get_config
    c = get_config()
    return c.doc_host.rstrip('/') + '/' + c.get('doc_baseurl', '').strip('/')


_LINK = re.compile(r'\]\((?![a-z]+:|#|/)([^)\s]+\.html(?:#[^)\s]*)?)\)')


def absolute_links(md: str, base: str) -> str:
    "Relative links to .html pages made absolute under `base`."
    return _LINK.sub(lambda m: '](' + base.rstrip('/') + '/' + m.group(1) + ')', md)


def render(nb_path=ROOT/'nbs'/'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        lines = src.splitlines()
        directives = [ln[2:].strip() for ln in lines if ln.startswith('#|')]
        if c['cell_type'] == 'markdown':
            parts.append(absolute_links(src.strip(), docs_url()))
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
