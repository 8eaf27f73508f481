"""What every command shares, beneath everything else: exit codes and error kinds (errors), writing to a
temp name then renaming (fileio), local or `gs://`/`s3://` folders (storage), one run per output folder
(outlock), the disk-full line (diskfull), start-up noise kept off the console (quiet), Ctrl-C that is never
lost (interrupts), and which process of several this is (cluster).

May import: nothing of fashion's outside core/ (the layers are checked by `make lint`: import-linter).
"""
