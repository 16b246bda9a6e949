psql "host=database-1.cluster-abc.us-east-2.rds.amazonaws.com hostaddr=127.0.0.1 port=5433 dbname=geo user=gis_reader sslmode=verify-full sslrootcert=/home/ana/.postgresql/rds-global-bundle.pem connect_timeout=60"
#NOTE (stderr) no password here: `tunnelman conn verify --format pgpass --write` stores it in your .pgpass, or `tunnelman psql` uses it without storing
