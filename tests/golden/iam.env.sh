# tunnelman profile 'iam' via 127.0.0.1:5433: the tunnel must be up (tunnelman up iam)
# IAM auth: the password is a token valid 15 minutes; `tunnelman psql` / `tunnelman exec` fetch one for you
export PGHOST=127.0.0.1
export PGPORT=5433
export PGDATABASE=app
export PGUSER=iam_user
export PGSSLMODE=require
export PGCONNECT_TIMEOUT=15
unset PGHOSTADDR PGSSLROOTCERT PGSERVICE PGPASSWORD
