"""Greet whoever $NAME names, in colour when the output is a terminal."""

import os

from termcolor import colored

name = os.environ.get("NAME", "World")
print(colored(f"Hello {name}!", "green", attrs=["bold"]))
