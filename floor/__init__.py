"""The floor: errors, file-system helpers, units, rdiff; it imports nothing of ours."""
