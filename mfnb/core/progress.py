"""Progress bars that are live widgets in JupyterLab and a final, truthful line in executed notebooks.

tqdm's notebook bar is an ipywidget: an executed notebook (papermill, nbclient) saves only the text form it
had when first displayed, so every bar would read "0%" forever.  ``progress`` displays its widget under a
display id and updates that display when the bar closes, so the saved text is the bar's last state.
Outside a Jupyter kernel it is plain ``tqdm.auto.tqdm``.
"""
from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm as _auto_tqdm

try:
    from IPython.display import display as _display
    from tqdm.notebook import tqdm as _notebook_tqdm
except ImportError:  # no IPython: terminal bars only
    _notebook_tqdm = None

_IN_NOTEBOOK = _notebook_tqdm is not None and issubclass(_auto_tqdm, _notebook_tqdm)


class progress(_auto_tqdm):  # noqa: N801 - used exactly like tqdm
    """``tqdm.auto.tqdm``; in a notebook its saved output ends with the bar's final line."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._handle = None
        if not _IN_NOTEBOOK:
            super().__init__(*args, **kwargs)
            return
        kwargs["display"] = False
        super().__init__(*args, **kwargs)
        if not self.disable and hasattr(self, "container"):
            self._handle = _display(self.container, display_id=True)
            self.displayed = True

    def close(self) -> None:
        super().close()
        if self._handle is not None:
            self._handle.update(self.container)  # its text/plain is now the final meter
            self._handle = None
