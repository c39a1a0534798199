"""The recipes that train the zoo (``make zoo``): corpora, the training loop, and one module per organism.

Nothing outside ``make zoo``, zoo-check and the tests imports these; loading a zoo model
needs only the registry (``circuits.zoo``) and the checkpoint's own files.
"""
