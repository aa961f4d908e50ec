from deltagrid.cli import entry

entry()
