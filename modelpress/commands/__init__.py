"""The CLI's commands, one module each (``modelpress.cli`` keeps the parser and names them in its command
table, imported when the command runs, so ``modelpress --help`` loads neither the stages nor torch)."""
