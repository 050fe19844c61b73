"""What a run becomes for people: the study summary."""
