from .cli import main
from .train.cli import exit_process

exit_process(main())
