/*
 * cmd_models.c - `statetune --db FILE models list [--json]`: the models the
 * registry knows (name, the sha256 that identifies the file, the inferred
 * configuration, where it was registered from). Registering a model changes
 * the registry, so it goes through the coordinator (issue #7).
 */
#include "client/client.h"
#include "common/st_err.h"
#include "store/registry_read.h"

static int s_list(int argc, char **argv, const char *db);

static const client_subcmd_t s_subs[] = {
    {"list", s_list, "[--endpoint ENDPOINT | --db FILE] models list [--json]", "registered models"},
    {"register", NULL, "[--endpoint ENDPOINT] models register NAME MODEL_FILE", "register a model file"},
    {NULL, NULL, NULL, NULL},
};

const char *const cmd_models_usage[] = {
    "[--endpoint ENDPOINT | --db FILE] models list [--json]",
    "[--endpoint ENDPOINT] models register NAME MODEL_FILE",
    NULL,
};

int cmd_models_local(int argc, char **argv, const char *db)
{
    return client_dispatch_sub("models", s_subs, argc, argv, db);
}

/* A config number as text, "-" when the config does not hold it. */
static void s_cfg(json_t *m, const char *key, char *buf, size_t n)
{
    json_t *v = json_object_get(json_object_get(m, "config"), key);
    if (json_is_integer(v)) snprintf(buf, n, "%lld", (long long)json_integer_value(v));
    else snprintf(buf, n, "-");
}

static int s_list(int argc, char **argv, const char *db)
{
    json_t *list;
    int rc = client_registry_list(argc, argv, s_subs[0].usage, db, registry_list_models, &list);
    if (rc || !list) return rc;
    if (json_array_size(list) == 0) {
        printf("no models registered yet\n");
        json_decref(list);
        return CLIENT_OK;
    }
    static const char *const titles[] = {"NAME", "SHA256", "LAYERS", "EMBD", "VOCAB", "REGISTERED (UTC)", "PATH"};
    client_table_t *t = client_table_new(7, titles);
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m) {
        char sha[16], layers[16], embd[16], vocab[16], when[32];
        snprintf(sha, sizeof sha, "%.12s", json_string_value(json_object_get(m, "sha256")));
        s_cfg(m, "n_layer", layers, sizeof layers);
        s_cfg(m, "n_embd", embd, sizeof embd);
        s_cfg(m, "vocab", vocab, sizeof vocab);
        client_format_time(json_real_value(json_object_get(m, "created")), when, sizeof when);
        const char *path = json_string_value(json_object_get(m, "path"));
        const char *row[7] = {json_string_value(json_object_get(m, "name")), sha, layers, embd, vocab, when,
                              path && *path ? path : "-"};
        client_table_add(t, row);
    }
    client_table_print(t, stdout);
    client_table_destroy(&t);
    json_decref(list);
    return CLIENT_OK;
}
