"""tunebench: should you LoRA-fine-tune an open model or pay OpenAI to fine-tune one?

The package follows the pipeline, one subpackage per stage, each reading and writing files
in a run directory: ``data`` -> ``tasks`` (prompts) -> ``training`` -> ``inference`` ->
``evaluation`` -> ``cost`` -> ``report``; ``providers`` holds the hosted fine-tuning
services and ``cli`` the ``tunebench`` command.
"""

__version__ = "0.1.0"
