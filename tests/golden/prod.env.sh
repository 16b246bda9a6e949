# tunnelman profile 'prod' via 127.0.0.1:5433: the tunnel must be up (tunnelman up prod)
# no password here: `tunnelman conn prod --format pgpass --write` stores it in your .pgpass, or `tunnelman psql` uses it without storing
export PGHOST=127.0.0.1
export PGPORT=5433
export PGDATABASE=geo
export PGUSER=postgres
export PGSSLMODE=require
export PGCONNECT_TIMEOUT=15
unset PGHOSTADDR PGSSLROOTCERT PGSERVICE PGPASSWORD
