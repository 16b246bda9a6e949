# tunnelman profile 'odd.db-1' via 127.0.0.1:5433: the tunnel must be up (tunnelman up odd.db-1)
export PGHOST=127.0.0.1
export PGPORT=5433
export PGDATABASE='my db:'"'"'x'"'"''
export PGUSER='o'"'"'brien\ @x%é'
export PGSSLMODE=prefer
export PGSSLROOTCERT='/home/ana/certs dir/ca.pem'
export PGCONNECT_TIMEOUT=15
unset PGHOSTADDR PGSERVICE PGPASSWORD
