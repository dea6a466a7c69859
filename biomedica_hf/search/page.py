"""The search page served at ``/``: one self-contained HTML file (no external assets or CDNs), the template
``biomedica_hf/templates/search_page.html``."""
from __future__ import annotations

from biomedica_hf.templates import SEARCH_PAGE, render

PAGE_HTML = render(SEARCH_PAGE)
