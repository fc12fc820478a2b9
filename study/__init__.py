"""Studies: a YAML grid of runs expanded into the tools' own command lines, run resumably, and reported."""
