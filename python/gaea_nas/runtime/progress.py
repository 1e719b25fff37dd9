"""Progress bars for long loops (tqdm, from the ``nas`` extra)."""
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool = True, unit: str = "step") -> Any:
    """A tqdm bar over ``total`` steps starting at ``initial`` (a disabled one when not
    ``enabled``); it leaves no line behind and adapts to the terminal width."""
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError("progress bars need tqdm: pip install 'gaea-ext[nas]'") from None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=False,
                dynamic_ncols=True)
