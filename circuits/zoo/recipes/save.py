"""Writing zoo checkpoints: ordinary HF folders plus the recipe that made them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def save_zoo_model(model, tokenizer, path: str | Path, recipe: dict[str, Any]) -> None:
    """Save an HF model + tokenizer + recipe.json into ``path`` atomically (temp dir, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-" + path.name))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # a generic class, so AutoTokenizer users and load_model read tokenizer.json as is
        cfg_path = tmp / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2, default=str) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
