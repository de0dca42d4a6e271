"""Running prompts somewhere other than the server process (issue 9).

``backend`` is the contract the worker runs prompts through and its in-process implementation;
``spec`` parses ``--workers``; ``placement`` chooses a worker for a prompt; ``ray_backend`` runs
prompts on Ray actors and is the only module that imports Ray (lazily: Ray is the optional
``distributed`` extra). See docs/scaling.md.
"""
