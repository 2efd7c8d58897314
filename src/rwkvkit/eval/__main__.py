"""``python -m rwkvkit.eval``: lm-evaluation-harness's own command line (``run``, ``ls``, ``validate``,
every option of the harness) with the ``rwkvkit`` model registered::

    python -m rwkvkit.eval run --model rwkvkit --model_args pretrained=model.pth --batch_size 16 \\
        --tasks hellaswag --device cpu

(The harness finds models only in modules that were imported; this module imports
:mod:`rwkvkit.eval.harness`, which registers the model once, under its own module name.)
"""

import sys

try:
    from rwkvkit.eval.harness import main
except ModuleNotFoundError as e:  # the optional eval extra
    if not (e.name or "").startswith("lm_eval"):
        raise
    print("error: lm-evaluation-harness is not installed: pip install 'rwkvkit[eval]'", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    main()
