# Runs inside the container: proves it has its own root, pid and hostname.
echo "hello from a container: pid $$, root has $(ls / | wc -l) entries, hostname $(hostname)"
