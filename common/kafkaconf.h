/* Building a librdkafka configuration from Tally's settings: how every
 * program that talks to Kafka (the collector's consumer and DLQ producer,
 * tally-ingest's producer) reaches the brokers, TLS and SASL included.
 * One table of connection settings (KAFKACONF_SETTINGS) and one function
 * that applies them, so the programs cannot drift apart. */
#ifndef TALLY_KAFKACONF_H
#define TALLY_KAFKACONF_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

/* Where the brokers are and how to authenticate; every pointer borrowed
 * (the settings table's targets). NULL means "not set" for the optional
 * ones (sasl_*, ssl_ca_location). */
typedef struct {
    const char *brokers;
    const char *security_protocol;
    const char *sasl_mechanism;
    const char *sasl_username;
    const char *sasl_password;
    const char *ssl_ca_location;
} kafkaconf_connection;

/* The rows of a cfg_setting table (config.h) for TLS and SASL, filling the
 * fields of the kafkaconf_connection `conn` (an lvalue). TALLY_KAFKA_BROKERS
 * stays in each program's table: its help differs. */
#define KAFKACONF_SETTINGS(conn)                                                                 \
    {"TALLY_KAFKA_SECURITY_PROTOCOL", "kafka-security-protocol", CFG_STRING,                     \
     &(conn).security_protocol, "plaintext", false, false, 0, 0,                                 \
     "plaintext, ssl, sasl_plaintext or sasl_ssl"},                                              \
    {"TALLY_KAFKA_SASL_MECHANISM", "kafka-sasl-mechanism", CFG_STRING, &(conn).sasl_mechanism,   \
     NULL, false, false, 0, 0, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with sasl_*)"},           \
    {"TALLY_KAFKA_SASL_USERNAME", "kafka-sasl-username", CFG_STRING, &(conn).sasl_username, NULL, \
     false, false, 0, 0, "SASL user name"},                                                      \
    {"TALLY_KAFKA_SASL_PASSWORD", "kafka-sasl-password", CFG_STRING, &(conn).sasl_password, NULL, \
     false, true, 0, 0, "SASL password (or TALLY_KAFKA_SASL_PASSWORD_FILE)"},                    \
    {"TALLY_KAFKA_SSL_CA_LOCATION", "kafka-ssl-ca-location", CFG_STRING,                         \
     &(conn).ssl_ca_location, NULL, false, false, 0, 0,                                          \
     "CA certificate file the brokers' certificates are verified "                               \
     "against (ssl, sasl_ssl; default: the system's store)"}

/* Sets one property. False with err filled (naming the property, never a
 * secret's value) when librdkafka refuses it. */
bool kafkaconf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                   size_t err_size) __attribute__((warn_unused_result));

/* Sets bootstrap.servers, client.id, security.protocol and whichever of
 * SASL and TLS `connection` (borrowed) gives. False with err filled. */
bool kafkaconf_set_connection(rd_kafka_conf_t *conf, const kafkaconf_connection *connection,
                              const char *client_id, char *err, size_t err_size)
    __attribute__((warn_unused_result));

/* librdkafka's log callback (rd_kafka_conf_set_log_cb): its lines in ours,
 * syslog levels 0-3 as errors, 4 as warnings, the rest as debug detail. */
void kafkaconf_log(const rd_kafka_t *rk, int level, const char *facility, const char *text);

#endif
