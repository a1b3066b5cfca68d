"""The past: the time machine, rolling recordings, their index, export and inspection."""
