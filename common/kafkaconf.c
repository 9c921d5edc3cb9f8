/* Kafka client configuration from settings (kafkaconf.h). */
#include "kafkaconf.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

bool kafkaconf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                   size_t err_size)
{
    char kafka_err[256];
    if (rd_kafka_conf_set(conf, name, value, kafka_err, sizeof kafka_err) == RD_KAFKA_CONF_OK)
        return true;
    /* Never echo a secret's value. */
    snprintf(err, err_size, "Kafka setting %s=%s: %s", name,
             strcmp(name, "sasl.password") == 0 ? "(hidden)" : value, kafka_err);
    return false;
}

bool kafkaconf_set_connection(rd_kafka_conf_t *conf, const kafkaconf_connection *connection,
                              const char *client_id, char *err, size_t err_size)
{
    const kafkaconf_connection *c = connection;
    return kafkaconf_set(conf, "bootstrap.servers", c->brokers, err, err_size) &&
           kafkaconf_set(conf, "client.id", client_id, err, err_size) &&
           kafkaconf_set(conf, "security.protocol", c->security_protocol, err, err_size) &&
           (c->sasl_mechanism == NULL ||
            kafkaconf_set(conf, "sasl.mechanisms", c->sasl_mechanism, err, err_size)) &&
           (c->sasl_username == NULL ||
            kafkaconf_set(conf, "sasl.username", c->sasl_username, err, err_size)) &&
           (c->sasl_password == NULL ||
            kafkaconf_set(conf, "sasl.password", c->sasl_password, err, err_size)) &&
           (c->ssl_ca_location == NULL ||
            kafkaconf_set(conf, "ssl.ca.location", c->ssl_ca_location, err, err_size));
}

void kafkaconf_log(const rd_kafka_t *rk, int level, const char *facility, const char *text)
{
    (void)rk;
    if (level <= 3)
        log_error("kafka %s: %s", facility, text);
    else if (level <= 4)
        log_warn("kafka %s: %s", facility, text);
    else
        log_debug("kafka %s: %s", facility, text);
}
