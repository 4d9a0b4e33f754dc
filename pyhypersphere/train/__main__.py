from .cli import exit_process, run

exit_process(run())
