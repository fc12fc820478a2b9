"""Rehearse the paper's paths at their real settings, a few iterations each, with projected full-schedule cost."""
