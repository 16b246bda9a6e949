# tunnelman profile 'verify' via 127.0.0.1:5433: the tunnel must be up (tunnelman up verify)
# no password here: `tunnelman conn verify --format pgpass --write` stores it in your .pgpass, or `tunnelman psql` uses it without storing
export PGHOST=database-1.cluster-abc.us-east-2.rds.amazonaws.com
export PGHOSTADDR=127.0.0.1
export PGPORT=5433
export PGDATABASE=geo
export PGUSER=gis_reader
export PGSSLMODE=verify-full
export PGSSLROOTCERT=/home/ana/.postgresql/rds-global-bundle.pem
export PGCONNECT_TIMEOUT=60
unset PGSERVICE PGPASSWORD
