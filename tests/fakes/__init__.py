"""In-process stand-ins for the outside services Neruba talks to."""
