psql "host=127.0.0.1 port=5433 dbname=geo user=postgres sslmode=require connect_timeout=15"
#NOTE (stderr) no password here: `tunnelman conn prod --format pgpass --write` stores it in your .pgpass, or `tunnelman psql` uses it without storing
